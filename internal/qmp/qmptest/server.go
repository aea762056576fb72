// Package qmptest is a scripted fake QMP server for tests of code that
// drives QEMU over QMP.
//
// A script is an ordered list of Steps: each incoming command must be the
// next step's command, is answered as the step says, and is recorded.
// Commands that recur in no fixed order (query-status polling) can be
// answered by Handle instead. qmp_capabilities is handled as QEMU does
// (and recorded), so scripts start with the first real command.
//
//	srv := qmptest.NewServer(t,
//		qmptest.Expect("device_del").Args(map[string]any{"id": "disk1"}).
//			Event("DEVICE_DELETED", map[string]any{"device": "disk1", "path": "/machine/peripheral/disk1"}),
//		qmptest.Expect("quit").HangUp(),
//	)
//	c := srv.Dial(t) // or qmp.Dial(ctx, srv.Path())
//
// At the end of the test the server closes, and fails the test if scripted
// steps never arrived.
package qmptest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"tandem/internal/qmp"
)

// Command is a command the server received.
type Command struct {
	Name string
	Args json.RawMessage // nil when the command had no arguments
}

// Server is a fake QEMU QMP socket. Its methods are safe for concurrent use.
type Server struct {
	t    testing.TB
	path string
	ln   net.Listener
	stop chan struct{} // closed by HangUp: aborts delays

	mu       sync.Mutex
	script   []*Step
	next     int
	handlers map[string]*Step
	cmds     []Command
	changed  chan struct{} // closed and replaced whenever cmds grows
	conns    map[*sconn]bool
	version  [3]int
	hungUp   bool

	wg sync.WaitGroup
}

type sconn struct {
	nc  net.Conn
	wmu sync.Mutex
}

// send writes one message, CRLF-terminated as QEMU does.
func (c *sconn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err = c.nc.Write(append(b, '\r', '\n'))
	return err
}

// NewServer listens on a unix socket in a temporary directory and serves
// the script to every client that connects, one step at a time.
func NewServer(t testing.TB, script ...*Step) *Server {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 80 { // sun_path holds 108 bytes; long test names overflow it
		d, err := os.MkdirTemp("", "qmptest")
		if err != nil {
			t.Fatalf("qmptest: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		dir = d
	}
	path := filepath.Join(dir, "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("qmptest: %v", err)
	}
	s := &Server{
		t: t, path: path, ln: ln, stop: make(chan struct{}),
		script: script, handlers: map[string]*Step{}, changed: make(chan struct{}),
		conns: map[*sconn]bool{}, version: [3]int{7, 2, 0},
	}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.finish)
	return s
}

// Path is the socket to dial.
func (s *Server) Path() string { return s.path }

// Dial connects a qmp.Client, failing the test if that takes over 5 s.
// The client is closed when the test ends.
func (s *Server) Dial(t testing.TB) *qmp.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, s.path)
	if err != nil {
		t.Fatalf("qmptest: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// SetVersion sets the QEMU version the greeting announces (default 7.2.0)
// for clients that connect afterwards.
func (s *Server) SetVersion(major, minor, micro int) {
	s.mu.Lock()
	s.version = [3]int{major, minor, micro}
	s.mu.Unlock()
}

// Handle answers every name command that does not match the script's next
// step with step, which is never used up. Build step with Expect(name).
func (s *Server) Handle(name string, step *Step) {
	s.mu.Lock()
	s.handlers[name] = step
	s.mu.Unlock()
}

// Emit pushes an event to every connected client now.
func (s *Server) Emit(name string, data any) error {
	s.mu.Lock()
	conns := make([]*sconn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if len(conns) == 0 {
		return fmt.Errorf("qmptest: no client connected for event %s", name)
	}
	for _, c := range conns {
		if err := c.send(eventMessage(event{name, data})); err != nil {
			return err
		}
	}
	return nil
}

// HangUp closes every connection and the listener, as when QEMU dies.
func (s *Server) HangUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hungUp {
		return
	}
	s.hungUp = true
	close(s.stop)
	s.ln.Close()
	for c := range s.conns {
		c.nc.Close()
	}
}

// Commands returns what the server has received so far, in order.
func (s *Server) Commands() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Command(nil), s.cmds...)
}

// Names returns the names of the commands received so far, in order.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, len(s.cmds))
	for i, c := range s.cmds {
		names[i] = c.Name
	}
	return names
}

// Pending names the scripted commands that have not arrived yet.
func (s *Server) Pending() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for _, st := range s.script[s.next:] {
		names = append(names, st.name)
	}
	return names
}

// WaitFor waits up to timeout until a command called name has been
// received (at any time, before the call included) and returns it.
func (s *Server) WaitFor(name string, timeout time.Duration) (Command, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		for _, c := range s.cmds {
			if c.Name == name {
				s.mu.Unlock()
				return c, true
			}
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return Command{}, false
		}
	}
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.hungUp {
			s.mu.Unlock()
			nc.Close()
			return
		}
		c := &sconn{nc: nc}
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

// finish runs at test cleanup: stop serving, then report unused steps.
func (s *Server) finish() {
	s.HangUp()
	s.wg.Wait()
	if p := s.Pending(); len(p) > 0 {
		s.t.Errorf("qmptest: scripted commands never arrived: %v (received %v)", p, s.Names())
	}
}
