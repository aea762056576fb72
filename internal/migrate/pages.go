package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Lazy (post-copy) container moves: the destination's `criu lazy-pages` daemon pulls memory from
// the source's page server, and both speak TCP only. Tunnels are opened by the source alone, so
// the source opens a "pages" tunnel before it asks for the restore and joins it to its page server
// on its loopback (joinPages); the destination parks the tunnel (pageRelay.park) and splices it
// onto the connection its lazy-pages daemon makes to a listener on the destination daemon's
// loopback. CRIU's lazy-pages daemon makes exactly one connection (criu/uffd.c,
// connect_to_page_server_to_recv); the relay pairs each connection with one parked tunnel.

// parkWait bounds how long a connection to the relay waits for a tunnel from the source.
var parkWait = 10 * time.Second

// pagesGrace is how long a committed move's page connection may take to end by itself (the
// lazy-pages daemon's last exchange) before it is cut.
const pagesGrace = 30 * time.Second

var errRelayClosed = errors.New("the page relay is closed")

// pageRelay is the destination's end: a loopback TCP listener whose connections are joined to
// parked tunnels.
type pageRelay struct {
	ln     net.Listener
	seen   func() // called on every chunk either way (activity, for the watchdog)
	parked chan *parkedTunnel
	closed chan struct{}
	once   sync.Once

	mu   sync.Mutex
	live map[io.Closer]bool
	cut  bool // live connections were cut: new pairs are closed at once
}

// parkedTunnel is a tunnel from the source, waiting for the lazy-pages daemon's connection.
type parkedTunnel struct {
	t    io.ReadWriteCloser
	done chan error
}

// newPageRelay listens on an ephemeral loopback port of this daemon's network namespace.
func newPageRelay(seen func()) (*pageRelay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the lazy-pages daemon: %w", err)
	}
	r := &pageRelay{ln: ln, seen: seen, parked: make(chan *parkedTunnel), closed: make(chan struct{}), live: map[io.Closer]bool{}}
	go r.serve()
	return r, nil
}

// Addr is the page server address to give the destination's lazy-pages daemon.
func (r *pageRelay) Addr() string { return r.ln.Addr().String() }

// park hands a tunnel from the source to the relay and returns when a connection has used it and
// it ended, or when the relay closed (or ctx ended) before any connection took it.
func (r *pageRelay) park(ctx context.Context, t io.ReadWriteCloser) error {
	p := &parkedTunnel{t: t, done: make(chan error, 1)}
	select {
	case r.parked <- p:
	case <-r.closed:
		t.Close()
		return errRelayClosed
	case <-ctx.Done():
		t.Close()
		return ctx.Err()
	}
	return <-p.done
}

func (r *pageRelay) serve() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		go r.pair(c)
	}
}

// pair joins an accepted connection to the next parked tunnel.
func (r *pageRelay) pair(c net.Conn) {
	var p *parkedTunnel
	select {
	case p = <-r.parked:
	case <-r.closed:
		c.Close()
		return
	case <-time.After(parkWait):
		slog.Warn("lazy pages: a connection found no tunnel from the source", "waited", parkWait)
		c.Close()
		return
	}
	r.track(true, c, p.t)
	err := splice(c, p.t, nil, r.seen)
	r.track(false, c, p.t)
	p.done <- err
}

func (r *pageRelay) track(on bool, cs ...io.Closer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		switch {
		case on && r.cut:
			c.Close()
		case on:
			r.live[c] = true
		default:
			delete(r.live, c)
		}
	}
}

// Close stops taking connections and tunnels; live pairs are cut after grace (0: now). A
// committed move lets its last exchange end by itself; an aborted one cuts it at once, which
// makes the lazy-pages daemon fail.
func (r *pageRelay) Close(grace time.Duration) {
	r.once.Do(func() {
		close(r.closed)
		r.ln.Close()
	})
	if grace > 0 {
		time.AfterFunc(grace, r.cutLive)
		return
	}
	r.cutLive()
}

func (r *pageRelay) cutLive() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cut = true
	for c := range r.live {
		c.Close()
	}
}

// pagesLink is the source's end: one tunnel joined to the lazy dump's page server here.
type pagesLink struct {
	conns [2]io.Closer
	sent  atomic.Int64 // page server → destination
	done  chan struct{}
	err   error
	stop  func() bool
}

// joinPages opens a tunnel and joins it to the page server at addr; pages go at most bw bytes per
// second (0: no cap). A cancelled ctx cuts it.
func joinPages(ctx context.Context, open func(context.Context) (io.ReadWriteCloser, error), addr string, bw int64, seen func()) (*pagesLink, error) {
	t, err := open(ctx)
	if err != nil {
		return nil, fmt.Errorf("open the pages tunnel: %w", err)
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("connect to the page server: %w", err)
	}
	l := &pagesLink{conns: [2]io.Closer{c, t}, done: make(chan struct{})}
	l.stop = context.AfterFunc(ctx, l.cut)
	var src io.ReadWriteCloser = c
	if bw > 0 {
		src = &pacedConn{c: c.(*net.TCPConn), bw: bw, start: time.Now()}
	}
	go func() {
		l.err = splice(src, t, &l.sent, seen)
		l.stop()
		close(l.done)
	}()
	return l, nil
}

func (l *pagesLink) cut() {
	for _, c := range l.conns {
		c.Close()
	}
}

// finish waits up to grace for the link to end by itself, then cuts it.
func (l *pagesLink) finish(grace time.Duration) error {
	select {
	case <-l.done:
	case <-time.After(grace):
		l.cut()
		<-l.done
	}
	return l.err
}

// pacedConn reads at most bw bytes per second on average (the move's bandwidth cap). It exposes
// only what splice needs, so that io.Copy cannot bypass Read.
type pacedConn struct {
	c     *net.TCPConn
	bw    int64
	start time.Time
	n     int64
}

func (p *pacedConn) Read(b []byte) (int, error) {
	if max := int(max(p.bw/10, 4096)); len(b) > max { // small chunks: an even pace
		b = b[:max]
	}
	n, err := p.c.Read(b)
	p.n += int64(n)
	due := time.Duration(float64(p.n) / float64(p.bw) * float64(time.Second))
	if wait := due - time.Since(p.start); wait > 0 {
		time.Sleep(wait)
	}
	return n, err
}

func (p *pacedConn) Write(b []byte) (int, error) { return p.c.Write(b) }
func (p *pacedConn) Close() error                { return p.c.Close() }
func (p *pacedConn) CloseWrite() error           { return p.c.CloseWrite() }

// loopbackAddr returns a free TCP address on this namespace's loopback.
func loopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil
}
