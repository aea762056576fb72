// Package qmp is a client for the QEMU Machine Protocol.
//
// One reader goroutine owns the socket's read side: replies are routed to
// the caller waiting on the same id, and asynchronous events (which QEMU
// interleaves freely with replies) go to subscribers. A Client is safe for
// concurrent use.
//
// To catch the event a command causes (DEVICE_DELETED after device_del,
// STOP, SHUTDOWN, MIGRATION), start watching before sending the command:
// ExecuteAndWait does both, or call ExpectEvent, then Execute, then Wait.
// QEMU often emits the event before the command's reply (RESUME before
// cont's, SHUTDOWN before quit's), so watching after the reply loses it.
//
// Subscribers get a buffered channel (EventBuffer); a full buffer drops
// the newest events and counts them (DroppedEvents) rather than stall the
// reader, which would stall every reply. Waiters never drop: they keep
// the one event they want.
//
// Wire names follow QEMU 7.2's QAPI schema (qapi/*.json); note the schema's
// historical mix of spellings (device_add, migrate_cancel, system_reset,
// but blockdev-add, query-migrate).
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ErrClosed is returned (possibly wrapped with the cause) once the QMP
// connection is gone, typically because QEMU exited.
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error reply from QEMU: {"error":{"class":..,"desc":..}}.
// Class is almost always "GenericError"; the others are CommandNotFound,
// DeviceNotActive, DeviceNotFound, KVMMissingCap.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Client is a QMP connection. Create one with Dial or NewClient.
type Client struct {
	conn   net.Conn
	dec    *json.Decoder
	wsem   chan struct{} // one writer at a time; a channel so waiting honours ctx
	nextID atomic.Uint64
	ver    [3]int
	caps   []string

	mu      sync.Mutex
	pending map[uint64]chan response
	subs    map[*subscription]struct{}
	closed  bool
	err     error
	dropped uint64

	done chan struct{}
}

type response struct {
	ret json.RawMessage
	err error
}

// message is any JSON object QEMU sends: greeting, reply or event.
type message struct {
	QMP *struct {
		Version struct {
			Qemu struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     json.RawMessage `json:"id"`
}

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        uint64          `json:"id"`
}

// Dial connects to a QMP unix socket, reads the greeting and negotiates
// capabilities. QEMU serves one QMP client per socket at a time: while
// another client is connected the greeting never comes, so bound ctx.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", socketPath, err)
	}
	return NewClient(ctx, conn)
}

// NewClient speaks QMP over an established connection (for example one end
// of a socketpair handed to QEMU). It takes ownership of conn.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		dec:     json.NewDecoder(conn),
		wsem:    make(chan struct{}, 1),
		pending: make(map[uint64]chan response),
		subs:    make(map[*subscription]struct{}),
		done:    make(chan struct{}),
	}
	// A blocked read only wakes up through a deadline, so ctx sets one.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	var g message
	err := c.dec.Decode(&g)
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("qmp: waiting for greeting: %w", ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: reading greeting: %w", err)
	}
	if g.QMP == nil {
		conn.Close()
		return nil, errors.New("qmp: peer sent no QMP greeting")
	}
	v := g.QMP.Version.Qemu
	c.ver = [3]int{v.Major, v.Minor, v.Micro}
	c.caps = g.QMP.Capabilities

	go c.readLoop()
	// Out-of-band execution is offered but not enabled: every command
	// here runs in order, which is what QEMU guarantees without it.
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version is QEMU's version as announced in the greeting.
func (c *Client) Version() (major, minor, micro int) { return c.ver[0], c.ver[1], c.ver[2] }

// Capabilities lists the greeting's capabilities (QEMU 7.2: ["oob"]).
func (c *Client) Capabilities() []string { return append([]string(nil), c.caps...) }

// Done is closed when the connection is gone; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is nil while connected, then ErrClosed, possibly wrapping the cause.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close hangs up. Pending calls fail with ErrClosed and subscriptions end.
func (c *Client) Close() error {
	c.shutdown(nil)
	return nil
}

// Execute runs a command and waits for its reply. args (any JSON object,
// or nil for none) becomes "arguments"; the reply's "return" is decoded
// into result unless result is nil. An error reply is a *Error, wrapped
// with the command name (use errors.As). If ctx ends first the caller is
// released, but QEMU may still carry the command out: the late reply is
// dropped.
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	req := request{Execute: command, ID: c.nextID.Add(1)}
	if args != nil {
		raw, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp %s: encoding arguments: %w", command, err)
		}
		if string(raw) != "null" { // a nil map: QEMU rejects "arguments": null
			req.Arguments = raw
		}
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	line = append(line, '\n')

	ch := make(chan response, 1)
	c.mu.Lock()
	if c.closed {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.pending[req.ID] = ch
	c.mu.Unlock()

	if err := c.write(ctx, line); err != nil {
		c.forget(req.ID)
		if errors.Is(err, ErrClosed) {
			return err
		}
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			if errors.Is(r.err, ErrClosed) {
				return r.err
			}
			return fmt.Errorf("qmp %s: %w", command, r.err)
		}
		if result != nil {
			if err := json.Unmarshal(r.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decoding reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(req.ID)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// write sends one command line. A write interrupted halfway would leave
// a torn command in the stream, so that case closes the connection.
func (c *Client) write(ctx context.Context, line []byte) error {
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.Err()
	}
	defer func() { <-c.wsem }()

	var mu sync.Mutex
	finished, fired := false, false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !finished {
			fired = true
			c.conn.SetWriteDeadline(time.Unix(1, 0))
		}
	})
	n, err := c.conn.Write(line)
	stop()
	mu.Lock()
	finished = true
	if fired {
		c.conn.SetWriteDeadline(time.Time{})
	}
	mu.Unlock()
	if err == nil {
		return nil
	}
	if n == 0 && fired {
		return ctx.Err()
	}
	c.shutdown(err)
	return c.Err()
}

func (c *Client) readLoop() {
	var err error
	for {
		// Decode raw first: only a syntax error breaks the stream; an
		// odd-shaped object is skipped.
		var raw json.RawMessage
		if err = c.dec.Decode(&raw); err != nil {
			break
		}
		var m message
		if json.Unmarshal(raw, &m) != nil {
			continue
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if ts := m.Timestamp; ts != nil && ts.Seconds >= 0 { // -1: QEMU had no clock
				ev.Timestamp = time.Unix(ts.Seconds, ts.Microseconds*1000)
			}
			c.dispatch(ev)
		case len(m.ID) > 0:
			c.deliver(m)
		default:
			// A reply without id answers a request QEMU could not parse;
			// ours are always well-formed, and there is no one to tell.
		}
	}
	c.shutdown(err)
}

func (c *Client) deliver(m message) {
	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		return
	}
	c.mu.Lock()
	ch, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		return // the caller gave up (ctx) before the reply came
	}
	if m.Error != nil {
		ch <- response{err: m.Error}
	} else {
		ch <- response{ret: m.Return}
	}
}

// hangUp reports errors that only mean the peer went away. A peer that
// exits with our commands unread makes the kernel send a reset, so
// ECONNRESET is as ordinary as EOF when QEMU dies.
func hangUp(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// shutdown tears everything down once; cause is nil for a local Close.
func (c *Client) shutdown(cause error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.err = ErrClosed
	if cause != nil && !hangUp(cause) {
		c.err = fmt.Errorf("%w: %v", ErrClosed, cause)
	}
	for _, ch := range c.pending {
		ch <- response{err: c.err}
	}
	c.pending = nil
	for s := range c.subs {
		s.close()
	}
	c.subs = nil
	c.mu.Unlock()
	c.conn.Close()
	close(c.done)
}
