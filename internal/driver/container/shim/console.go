package shim

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/logfile"
)

// consoleReceiver listens on the socket runc hands the pty master to (--console-socket).
type consoleReceiver struct {
	ln   *net.UnixListener
	got  chan *os.File
	errc chan error
}

func listenConsole(path string) (*consoleReceiver, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	r := &consoleReceiver{ln: ln, got: make(chan *os.File, 1), errc: make(chan error, 1)}
	go func() {
		f, err := r.accept()
		if err != nil {
			r.errc <- err
			return
		}
		r.got <- f
	}()
	return r, nil
}

// accept takes one connection and the file descriptor runc sends over it (SCM_RIGHTS).
func (r *consoleReceiver) accept() (*os.File, error) {
	conn, err := r.ln.AcceptUnix()
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("receive console: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("receive console: no control message (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("receive console: no descriptor (%v)", err)
	}
	return os.NewFile(uintptr(fds[0]), "console-master"), nil
}

func (r *consoleReceiver) wait(d time.Duration) (*os.File, error) {
	select {
	case f := <-r.got:
		return f, nil
	case err := <-r.errc:
		return nil, err
	case <-time.After(d):
		return nil, errors.New("runc did not hand over the console within " + d.String())
	}
}

func (r *consoleReceiver) close() {
	r.ln.Close() // also removes the socket file
}

// console holds the pty master: output goes to the log and every attached client, input from any
// client goes to the pty.
type console struct {
	master  *os.File
	log     *logfile.Rotating
	mu      sync.Mutex
	clients map[*client]bool
	ln      *net.UnixListener
	done    chan struct{} // closed when the pty has no more output (init and its children are gone)
}

type client struct {
	conn net.Conn
	out  chan []byte
}

func newConsole(master *os.File, logPath string, logMax int64) (*console, error) {
	log, err := logfile.Open(logPath, logMax)
	if err != nil {
		return nil, err
	}
	c := &console{master: master, log: log, clients: map[*client]bool{}, done: make(chan struct{})}
	go c.pump()
	return c, nil
}

// serve accepts attach clients on path.
func (c *console) serve(path string) error {
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("attach socket: %w", err)
	}
	os.Chmod(path, 0o600)
	c.ln = ln
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.attach(conn)
		}
	}()
	return nil
}

func (c *console) attach(conn net.Conn) {
	cl := &client{conn: conn, out: make(chan []byte, 256)}
	c.mu.Lock()
	c.clients[cl] = true
	c.mu.Unlock()
	go func() { // to the client
		for b := range cl.out {
			conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Write(b); err != nil {
				break
			}
		}
		conn.Close()
	}()
	go func() { // from the client
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				c.master.Write(buf[:n])
			}
			if err != nil {
				c.detach(cl)
				return
			}
		}
	}()
}

func (c *console) detach(cl *client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.clients[cl] {
		delete(c.clients, cl)
		close(cl.out)
	}
}

// pump copies pty output until the pty reports EIO (no slave is open any more).
func (c *console) pump() {
	defer close(c.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := c.master.Read(buf)
		if n > 0 {
			b := append([]byte(nil), buf[:n]...)
			c.log.Write(b)
			c.mu.Lock()
			for cl := range c.clients {
				select {
				case cl.out <- b:
				default: // a client that cannot keep up is dropped, never the console
					delete(c.clients, cl)
					close(cl.out)
				}
			}
			c.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// drain waits (bounded) for the last output, then disconnects everyone.
func (c *console) drain(d time.Duration) {
	select {
	case <-c.done:
	case <-time.After(d):
	}
	if c.ln != nil {
		c.ln.Close()
	}
	c.mu.Lock()
	for cl := range c.clients {
		delete(c.clients, cl)
		close(cl.out)
	}
	c.mu.Unlock()
	c.log.Close()
	c.master.Close()
}
