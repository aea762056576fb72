package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// helloInterval is how often the client repeats its hello until the guest answers: while the agent
// has not opened its port yet QEMU holds our bytes back, and a guest that was writing when the
// previous host connection ended may have torn the first one.
const helloInterval = 200 * time.Millisecond

// Client is the host end of an agent connection. It is safe for concurrent use; requests share the
// connection.
type Client struct {
	rw    io.ReadWriteCloser
	c     *conn
	nonce string

	mu      sync.Mutex
	next    uint64
	reqs    map[uint64]chan *Frame
	ready   chan struct{}
	isReady bool
	version int
}

// Dial connects to an agent socket (QEMU's end of the virtio-serial port) and waits, up to ctx, for
// the guest agent to answer.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return NewClient(ctx, nc)
}

// NewClient speaks the protocol over rw, which it owns, and returns once the guest has answered.
func NewClient(ctx context.Context, rw io.ReadWriteCloser) (*Client, error) {
	var rnd [16]byte
	rand.Read(rnd[:])
	cl := &Client{rw: rw, nonce: hex.EncodeToString(rnd[:8]), reqs: map[uint64]chan *Frame{},
		ready: make(chan struct{})}
	// Request ids start at a random point so that frames a guest still sends for a previous
	// connection's requests match nothing here.
	cl.next = binary.BigEndian.Uint64(rnd[8:]) >> 16
	cl.c = newConn(rw, cl.handle)
	go cl.c.readLoop(rw)
	t := time.NewTicker(helloInterval)
	defer t.Stop()
	for {
		if err := cl.c.send(&Frame{T: tHello, Nonce: cl.nonce, Version: Version}); err != nil {
			cl.Close()
			return nil, err
		}
		select {
		case <-cl.ready:
			return cl, nil
		case <-t.C:
		case <-cl.c.done:
			cl.Close()
			return nil, ErrClosed
		case <-ctx.Done():
			cl.Close()
			return nil, fmt.Errorf("agent: no answer from the guest agent: %w", ctx.Err())
		}
	}
}

// Close hangs up; requests in flight fail.
func (cl *Client) Close() error {
	cl.c.close()
	return cl.rw.Close()
}

// Done is closed when the connection is gone.
func (cl *Client) Done() <-chan struct{} { return cl.c.done }

// GuestVersion is the protocol version the agent announced.
func (cl *Client) GuestVersion() int {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.version
}

func (cl *Client) handle(f *Frame) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if f.T == tHello {
		switch {
		case f.Nonce == cl.nonce && !cl.isReady:
			cl.isReady, cl.version = true, f.Version
			close(cl.ready)
		case f.Nonce == "" && cl.isReady:
			// A new agent process (the guest rebooted, or the agent was restarted): what the old one
			// was doing is lost. Fail those requests and shake hands again; new ones wait for it.
			for id, ch := range cl.reqs {
				select {
				case ch <- &Frame{T: tError, ID: id, Error: "the guest agent restarted"}:
				default:
				}
			}
			cl.isReady, cl.ready = false, make(chan struct{})
			cl.c.send(&Frame{T: tHello, Nonce: cl.nonce, Version: Version})
		}
		return
	}
	if !cl.isReady {
		return // left over from a previous connection
	}
	if ch := cl.reqs[f.ID]; ch != nil {
		select {
		case ch <- f:
		default: // a request gets at most a header and an end: more is a confused peer
		}
	}
}

// begin allocates a request id and the channel its control replies arrive on, once the guest agent
// has answered the handshake.
func (cl *Client) begin(ctx context.Context) (uint64, chan *Frame, func(), error) {
	cl.mu.Lock()
	for !cl.isReady {
		ready := cl.ready
		cl.mu.Unlock()
		select {
		case <-ready:
		case <-ctx.Done():
			return 0, nil, nil, ctx.Err()
		case <-cl.c.done:
			return 0, nil, nil, ErrClosed
		}
		cl.mu.Lock()
	}
	defer cl.mu.Unlock()
	cl.next++
	id := cl.next
	ch := make(chan *Frame, 4)
	cl.reqs[id] = ch
	return id, ch, func() {
		cl.mu.Lock()
		delete(cl.reqs, id)
		cl.mu.Unlock()
	}, nil
}

// wait returns the next control reply for a request.
func (cl *Client) wait(ctx context.Context, replies <-chan *Frame) (*Frame, error) {
	select {
	case f := <-replies:
		if f.T == tError {
			return nil, errors.New(f.Error)
		}
		return f, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-cl.c.done:
		return nil, ErrClosed
	}
}

// Exec runs a command in the guest and returns its exit code (128+n if signal n killed it). When
// ctx ends the command is killed.
func (cl *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	if len(req.Cmd) == 0 {
		return -1, errors.New("agent: exec: empty command")
	}
	id, replies, end, err := cl.begin(ctx)
	if err != nil {
		return -1, fmt.Errorf("agent: exec: %w", err)
	}
	defer end()
	stop := make(chan struct{})
	defer close(stop)
	var pumps sync.WaitGroup
	for fd, w := range map[int]io.Writer{1: req.Stdout, 2: req.Stderr} {
		in := cl.c.inbound(id, fd)
		defer cl.c.dropInbound(id, fd)
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			drain(w, in)
		}()
	}
	stdin := cl.c.outbound(id, 0, stop)
	defer cl.c.dropOutbound(id, 0)
	start := &ExecStart{Cmd: req.Cmd, Env: req.Env, Cwd: req.Cwd, TTY: req.TTY, Rows: req.Rows, Cols: req.Cols}
	if err := cl.c.send(&Frame{T: tExec, ID: id, Exec: start}); err != nil {
		return -1, err
	}
	if req.Stdin == nil {
		stdin.Close()
	} else {
		go func() {
			if _, err := io.Copy(stdin, req.Stdin); err == nil {
				stdin.Close()
			}
		}()
	}
	if req.Resize != nil {
		go func() {
			for {
				select {
				case ws, ok := <-req.Resize:
					if !ok {
						return
					}
					cl.c.send(&Frame{T: tResize, ID: id, Rows: ws.Rows, Cols: ws.Cols})
				case <-stop:
					return
				}
			}
		}()
	}
	f, err := cl.wait(ctx, replies)
	if err != nil {
		if ctx.Err() != nil {
			cl.c.send(&Frame{T: tSignal, ID: id, Signal: int(syscall.SIGKILL)})
		}
		return -1, fmt.Errorf("agent: exec %s: %w", req.Cmd[0], err)
	}
	if f.T != tExit {
		return -1, fmt.Errorf("agent: exec: unexpected %q reply", f.T)
	}
	// The guest ends both output streams before it reports the exit: let the pumps write them out.
	done := make(chan struct{})
	go func() { pumps.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return f.Code, ctx.Err()
	}
	return f.Code, nil
}

// drain copies a stream to w, and on to nowhere if w fails, so the sender is never left waiting.
func drain(w io.Writer, r io.Reader) {
	if w == nil {
		w = io.Discard
	}
	if _, err := io.Copy(w, r); err != nil && !errors.Is(err, ErrClosed) {
		io.Copy(io.Discard, r)
	}
}

// Info asks the guest about itself.
func (cl *Client) Info(ctx context.Context) (GuestInfo, error) {
	id, replies, end, err := cl.begin(ctx)
	if err != nil {
		return GuestInfo{}, fmt.Errorf("agent: info: %w", err)
	}
	defer end()
	if err := cl.c.send(&Frame{T: tInfo, ID: id}); err != nil {
		return GuestInfo{}, err
	}
	f, err := cl.wait(ctx, replies)
	if err != nil {
		return GuestInfo{}, fmt.Errorf("agent: info: %w", err)
	}
	if f.Info == nil {
		return GuestInfo{}, errors.New("agent: info: empty reply")
	}
	return *f.Info, nil
}

// Push writes r to an absolute path in the guest, atomically (a temporary file renamed into place).
func (cl *Client) Push(ctx context.Context, path string, r io.Reader, opts FileOpts) error {
	id, replies, end, err := cl.begin(ctx)
	if err != nil {
		return fmt.Errorf("agent: push %s: %w", path, err)
	}
	defer end()
	stop := make(chan struct{})
	defer close(stop)
	out := cl.c.outbound(id, 0, stop)
	defer cl.c.dropOutbound(id, 0)
	hdr := &FileHeader{Path: path, Mode: opts.Mode, UID: opts.UID, GID: opts.GID}
	if err := cl.c.send(&Frame{T: tPush, ID: id, File: hdr}); err != nil {
		return err
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, r)
		if err == nil {
			err = out.Close()
		}
		copied <- err
	}()
	for {
		select {
		case err := <-copied:
			if err != nil {
				cl.c.send(&Frame{T: tCancel, ID: id})
				return fmt.Errorf("agent: push %s: %w", path, err)
			}
			copied = nil
		case f := <-replies:
			if f.T == tError {
				return fmt.Errorf("agent: push %s: %s", path, f.Error)
			}
			return nil // done
		case <-ctx.Done():
			cl.c.send(&Frame{T: tCancel, ID: id})
			return ctx.Err()
		case <-cl.c.done:
			return ErrClosed
		}
	}
}

// Pull copies a guest file to w.
func (cl *Client) Pull(ctx context.Context, path string, w io.Writer) (FileInfo, error) {
	id, replies, end, err := cl.begin(ctx)
	if err != nil {
		return FileInfo{}, fmt.Errorf("agent: pull %s: %w", path, err)
	}
	defer end()
	in := cl.c.inbound(id, 1)
	defer cl.c.dropInbound(id, 1)
	if err := cl.c.send(&Frame{T: tPull, ID: id, File: &FileHeader{Path: path}}); err != nil {
		return FileInfo{}, err
	}
	f, err := cl.wait(ctx, replies)
	if err != nil {
		return FileInfo{}, fmt.Errorf("agent: pull %s: %w", path, err)
	}
	if f.T != tFile || f.File == nil {
		return FileInfo{}, fmt.Errorf("agent: pull %s: unexpected %q reply", path, f.T)
	}
	info := FileInfo{Mode: f.File.Mode, UID: f.File.UID, GID: f.File.GID, Size: f.File.Size}
	copied := make(chan error, 1)
	go func() {
		_, err := io.Copy(w, in)
		if err != nil {
			io.Copy(io.Discard, in)
		}
		copied <- err
	}()
	select {
	case err = <-copied:
	case <-ctx.Done():
		cl.c.send(&Frame{T: tCancel, ID: id})
		return info, ctx.Err()
	}
	if err != nil {
		return info, fmt.Errorf("agent: pull %s: %w", path, err)
	}
	if _, err := cl.wait(ctx, replies); err != nil {
		return info, fmt.Errorf("agent: pull %s: %w", path, err)
	}
	return info, nil
}
