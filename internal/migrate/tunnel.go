package migrate

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Every byte between hosts goes through the hosts' mutual-TLS channel: QEMU's migration and NBD
// streams and rsync are local unix sockets on both ends, joined by an upgraded HTTPS connection
// per socket connection (a tunnel). Nothing listens on the network but tandemd.

// halfCloser is a connection whose write side can be closed on its own.
type halfCloser interface{ CloseWrite() error }

// splice copies both ways until both directions end or one fails, then closes both. sent counts
// the bytes a→b; seen is called on every chunk either way (activity, for a watchdog). Either may
// be nil. After one direction ends cleanly the other gets lingerTimeout to finish.
func splice(a, b io.ReadWriteCloser, sent *atomic.Int64, seen func()) error {
	errs := make(chan error, 2)
	copyOne := func(dst, src io.ReadWriteCloser, count *atomic.Int64) {
		_, err := io.Copy(writerFunc(func(p []byte) (int, error) {
			n, err := dst.Write(p)
			if count != nil {
				count.Add(int64(n))
			}
			if seen != nil {
				seen()
			}
			return n, err
		}), src)
		if hc, ok := dst.(halfCloser); ok && err == nil {
			hc.CloseWrite() // the far side sees EOF and may still answer
		}
		errs <- err
	}
	go copyOne(b, a, sent)
	go copyOne(a, b, nil)
	first := <-errs
	var second error
	if first == nil {
		select {
		case second = <-errs:
		case <-time.After(lingerTimeout):
		}
	}
	a.Close()
	b.Close()
	for _, err := range []error{first, second} {
		if err != nil && !isClosedErr(err) {
			return err
		}
	}
	return nil
}

// lingerTimeout is how long a tunnel waits for its second direction once the first has ended.
const lingerTimeout = 30 * time.Second

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}

// forwarder listens on a unix socket here and joins every connection to a new tunnel.
type forwarder struct {
	seen func() // called on every chunk either way
	path string
	ln   net.Listener
	open func(ctx context.Context) (io.ReadWriteCloser, error)
	ctx  context.Context
	sent atomic.Int64
	wg   sync.WaitGroup
	err  atomic.Value // first tunnel error

	mu        sync.Mutex
	conns     map[io.Closer]bool // both ends of every live tunnel
	closed    chan struct{}
	closeOnce sync.Once
}

// forward starts a forwarder on path; Close it when the transfer is over.
func forward(ctx context.Context, path string, open func(ctx context.Context) (io.ReadWriteCloser, error), seen func()) (*forwarder, error) {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	f := &forwarder{path: path, ln: ln, open: open, ctx: ctx, seen: seen, conns: map[io.Closer]bool{}, closed: make(chan struct{})}
	f.wg.Add(1)
	go f.serve()
	// A cancelled move cuts its tunnels at once: QEMU's NBD client or rsync on a dead link would
	// otherwise wait for TCP to give up, and a block job cannot be cancelled while its I/O hangs.
	stop := context.AfterFunc(ctx, f.cut)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		<-f.closed
		stop()
	}()
	return f, nil
}

// cut closes every live tunnel, both ends.
func (f *forwarder) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.Close()
	}
}

func (f *forwarder) track(c io.Closer, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if on {
		f.conns[c] = true
	} else {
		delete(f.conns, c)
	}
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			t, err := f.open(f.ctx)
			if err != nil {
				f.err.CompareAndSwap(nil, err)
				slog.Warn("migration tunnel", "socket", f.path, "err", err)
				c.Close()
				return
			}
			f.track(c, true)
			f.track(t, true)
			if f.ctx.Err() != nil { // cut before it was tracked
				c.Close()
				t.Close()
			}
			if err := splice(c, t, &f.sent, f.seen); err != nil {
				f.err.CompareAndSwap(nil, err)
			}
			f.track(c, false)
			f.track(t, false)
		}()
	}
}

// Err is the first error a tunnel of this forwarder met.
func (f *forwarder) Err() error {
	if e, ok := f.err.Load().(error); ok {
		return e
	}
	return nil
}

// Close stops accepting and waits for the tunnels to end.
func (f *forwarder) Close() {
	f.ln.Close()
	os.Remove(f.path)
	f.closeOnce.Do(func() { close(f.closed) })
	f.wg.Wait()
}
