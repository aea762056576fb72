package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"sync"
)

// ErrClosed is returned once the connection is gone.
var ErrClosed = errors.New("agent: connection closed")

type streamKey struct {
	id uint64
	fd int
}

// conn multiplexes frames over one byte stream; both ends use it. Control frames go to the
// handler, which runs on the reader goroutine and must not block. Writes go through a queue and a
// writer goroutine, so the reader never blocks on a write (two readers each waiting for the other
// to read would deadlock); data frames are bounded by the flow-control window, acks by the data
// received, so the queue stays small.
type conn struct {
	w       io.Writer
	handler func(*Frame)

	mu      sync.Mutex
	queue   [][]byte
	wake    chan struct{}
	in      map[streamKey]*inStream
	credits map[streamKey]chan struct{}
	closed  bool
	done    chan struct{}
}

func newConn(w io.Writer, handler func(*Frame)) *conn {
	c := &conn{w: w, handler: handler, wake: make(chan struct{}, 1), in: map[streamKey]*inStream{},
		credits: map[streamKey]chan struct{}{}, done: make(chan struct{})}
	go c.writeLoop()
	return c
}

// send queues one frame. The leading newline ends any torn line a previous writer left.
func (c *conn) send(f *Frame) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	line := make([]byte, 0, len(b)+2)
	line = append(append(append(line, '\n'), b...), '\n')
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.queue = append(c.queue, line)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

func (c *conn) writeLoop() {
	var buf []byte
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		c.mu.Lock()
		q := c.queue
		c.queue = nil
		c.mu.Unlock()
		buf = buf[:0]
		for _, line := range q {
			buf = append(buf, line...)
		}
		if len(buf) == 0 {
			continue
		}
		if _, err := c.w.Write(buf); err != nil {
			c.close()
			return
		}
	}
}

// readLoop reads frames until r fails, then closes the connection.
func (c *conn) readLoop(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var long bool // inside a line too long to keep
	var buf []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if !long {
				buf = append(buf, chunk...)
				if len(buf) > maxLine {
					long, buf = true, nil
				}
			}
			continue
		}
		if err != nil {
			c.close()
			return err
		}
		if long {
			long = false
			continue
		}
		line := chunk
		if len(buf) > 0 {
			line = append(buf, chunk...)
			buf = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var f Frame
		if json.Unmarshal(line, &f) != nil || f.T == "" {
			continue // garbage from a torn write: resynchronised at this newline
		}
		c.dispatch(&f)
	}
}

func (c *conn) dispatch(f *Frame) {
	switch f.T {
	case tData:
		k := streamKey{f.ID, f.FD}
		c.mu.Lock()
		s := c.in[k]
		c.mu.Unlock()
		if s == nil {
			if !f.EOF {
				c.send(&Frame{T: tAck, ID: f.ID, FD: f.FD}) // nobody reads it: keep the sender going
			}
			return
		}
		if !s.push(f) {
			c.close() // the peer ignored the window: it does not speak this protocol
		}
	case tAck:
		c.mu.Lock()
		sem := c.credits[streamKey{f.ID, f.FD}]
		c.mu.Unlock()
		if sem != nil {
			select {
			case <-sem:
			default:
			}
		}
	default:
		c.handler(f)
	}
}

func (c *conn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	close(c.done)
	for k, s := range c.in {
		s.abort()
		delete(c.in, k)
	}
}

// inbound registers a stream the peer will send; register it before the request that starts it.
func (c *conn) inbound(id uint64, fd int) *inStream {
	s := &inStream{c: c, key: streamKey{id, fd}, ch: make(chan []byte, Window+1), aborted: make(chan struct{})}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		s.abort()
		return s
	}
	c.in[s.key] = s
	return s
}

// dropInbound forgets a stream: later data for it is acknowledged and discarded.
func (c *conn) dropInbound(id uint64, fd int) {
	c.mu.Lock()
	s := c.in[streamKey{id, fd}]
	delete(c.in, streamKey{id, fd})
	c.mu.Unlock()
	if s != nil {
		s.abort()
	}
}

// outbound returns a writer that sends a data stream within the flow-control window. stop ends
// blocked writes (the request finished or was cancelled).
func (c *conn) outbound(id uint64, fd int, stop <-chan struct{}) *outStream {
	k := streamKey{id, fd}
	sem := make(chan struct{}, Window)
	c.mu.Lock()
	c.credits[k] = sem
	c.mu.Unlock()
	return &outStream{c: c, key: k, sem: sem, stop: stop}
}

func (c *conn) dropOutbound(id uint64, fd int) {
	c.mu.Lock()
	delete(c.credits, streamKey{id, fd})
	c.mu.Unlock()
}

// inStream is a received data stream, read as an io.Reader.
type inStream struct {
	c       *conn
	key     streamKey
	ch      chan []byte
	cur     []byte
	eof     bool // only the reader goroutine touches it
	abortMu sync.Once
	aborted chan struct{}
}

// push queues a frame; false if the peer overran the window.
func (s *inStream) push(f *Frame) bool {
	if s.eof {
		return f.EOF // data after end-of-stream breaks the protocol; a repeated eof does not
	}
	if f.EOF {
		s.eof = true
		close(s.ch)
		return true
	}
	select {
	case s.ch <- f.Data:
		return true
	default:
		return false
	}
}

func (s *inStream) abort() { s.abortMu.Do(func() { close(s.aborted) }) }

// Read returns the stream's bytes; a frame is acknowledged once it has been handed out whole.
func (s *inStream) Read(p []byte) (int, error) {
	if len(s.cur) == 0 {
		select {
		case d, ok := <-s.ch:
			if !ok {
				return 0, io.EOF
			}
			s.cur = d
			if len(d) == 0 {
				s.ack()
				return 0, nil
			}
		case <-s.aborted:
			return 0, ErrClosed
		}
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	if len(s.cur) == 0 {
		s.ack()
	}
	return n, nil
}

func (s *inStream) ack() { s.c.send(&Frame{T: tAck, ID: s.key.id, FD: s.key.fd}) }

// outStream sends a data stream.
type outStream struct {
	c    *conn
	key  streamKey
	sem  chan struct{}
	stop <-chan struct{}
}

func (o *outStream) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > ChunkSize {
			chunk = chunk[:ChunkSize]
		}
		select {
		case o.sem <- struct{}{}:
		case <-o.stop:
			return n, ErrClosed
		case <-o.c.done:
			return n, ErrClosed
		}
		if err := o.c.send(&Frame{T: tData, ID: o.key.id, FD: o.key.fd, Data: chunk}); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Close sends end-of-stream.
func (o *outStream) Close() error {
	err := o.c.send(&Frame{T: tData, ID: o.key.id, FD: o.key.fd, EOF: true})
	o.c.dropOutbound(o.key.id, o.key.fd)
	return err
}

// copyCtx is io.Copy that gives up when ctx ends (the pending Read is abandoned).
func copyCtx(ctx context.Context, dst io.Writer, src io.Reader) error {
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(dst, src)
		errc <- err
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
