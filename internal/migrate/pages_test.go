package migrate

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection: a tunnel as the daemons see it (both
// ends can half-close).
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// fakePageServer answers every line "GET x" with "PAGE x" and "CLOSE" with "OK", then ends, like
// CRIU's page server after PS_IOV_CLOSE. It reports what it saw last.
func fakePageServer(t *testing.T) (string, <-chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	last := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := bufio.NewScanner(c)
		seen := "eof"
		for sc.Scan() {
			if seen = sc.Text(); seen == "CLOSE" {
				io.WriteString(c, "OK\n")
				break
			}
			io.WriteString(c, strings.Replace(seen, "GET", "PAGE", 1)+"\n")
		}
		last <- seen
	}()
	return ln.Addr().String(), last
}

// newLink parks the destination's end of a fresh tunnel at relay r and joins the source's end to
// the page server at addr; parked yields park's result.
func newLink(t *testing.T, ctx context.Context, r *pageRelay, addr string) (*pagesLink, <-chan error) {
	t.Helper()
	src, dst := tcpPair(t)
	parked := make(chan error, 1)
	go func() { parked <- r.park(context.Background(), dst) }()
	l, err := joinPages(ctx, func(context.Context) (io.ReadWriteCloser, error) { return src, nil }, addr, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	return l, parked
}

func within(t *testing.T, d time.Duration, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(d):
		t.Fatalf("%s did not end within %v", what, d)
		return nil
	}
}

// The lazy-pages daemon's connection to the relay reaches the page server through the parked
// tunnel, both ways, and everything ends cleanly after the final exchange.
func TestPageRelayCarriesPages(t *testing.T) {
	addr, last := fakePageServer(t)
	r, err := newPageRelay(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(0)
	l, parked := newLink(t, context.Background(), r, addr)

	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd := bufio.NewReader(c)
	for _, req := range []string{"GET 1", "GET 2", "CLOSE"} {
		io.WriteString(c, req+"\n")
		got, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", req, err)
		}
		if want := map[string]string{"GET 1": "PAGE 1\n", "GET 2": "PAGE 2\n", "CLOSE": "OK\n"}[req]; got != want {
			t.Fatalf("%s: got %q, want %q", req, got, want)
		}
	}
	if s := <-last; s != "CLOSE" {
		t.Fatalf("the page server saw %q last", s)
	}
	if _, err := rd.ReadString('\n'); err != io.EOF {
		t.Fatalf("after the page server ended the daemon reads %v, want EOF", err)
	}
	c.Close()
	if err := l.finish(5 * time.Second); err != nil {
		t.Fatalf("source link: %v", err)
	}
	if err := within(t, 5*time.Second, "park", parked); err != nil {
		t.Fatalf("park: %v", err)
	}
	if n := l.sent.Load(); n != int64(len("PAGE 1\nPAGE 2\nOK\n")) {
		t.Errorf("sent %d bytes", n)
	}
}

// A connection that finds no tunnel within parkWait is closed.
func TestPageRelayNoTunnel(t *testing.T) {
	defer func(d time.Duration) { parkWait = d }(parkWait)
	parkWait = 100 * time.Millisecond
	r, err := newPageRelay(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(0)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
}

// Closing the relay releases a parked tunnel nobody used (it is closed) and cuts live pairs at once.
func TestPageRelayClose(t *testing.T) {
	r, err := newPageRelay(nil)
	if err != nil {
		t.Fatal(err)
	}
	src, dst := tcpPair(t)
	parked := make(chan error, 1)
	go func() { parked <- r.park(context.Background(), dst) }()
	time.Sleep(50 * time.Millisecond)
	r.Close(0)
	if err := within(t, 5*time.Second, "park", parked); err != errRelayClosed {
		t.Fatalf("park after close: %v", err)
	}
	src.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := src.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the source's end reads %v, want EOF", err)
	}
	if err := r.park(context.Background(), dst); err != errRelayClosed {
		t.Fatalf("park on a closed relay: %v", err)
	}

	// A live pair: the daemon's connection and the source's end both end.
	addr, last := fakePageServer(t)
	r2, err := newPageRelay(nil)
	if err != nil {
		t.Fatal(err)
	}
	l, parked2 := newLink(t, context.Background(), r2, addr)
	c, err := net.Dial("tcp", r2.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET 7\n")
	if got, _ := bufio.NewReader(c).ReadString('\n'); got != "PAGE 7\n" {
		t.Fatalf("got %q", got)
	}
	r2.Close(0)
	within(t, 5*time.Second, "park", parked2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the daemon's connection survived the cut")
	}
	l.finish(5 * time.Second)
	if s := <-last; s == "CLOSE" {
		t.Fatal("the page server saw a close: a cut must look like a failure to CRIU")
	}
}

// A cancelled move cuts the source's link: the page server sees its connection end without a close.
func TestPagesLinkCutOnCancel(t *testing.T) {
	addr, last := fakePageServer(t)
	r, err := newPageRelay(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(0)
	ctx, cancel := context.WithCancel(context.Background())
	l, parked := newLink(t, ctx, r, addr)
	cancel()
	done := make(chan error, 1)
	go func() { done <- l.finish(time.Minute) }()
	within(t, 5*time.Second, "the cut link", done)
	select {
	case s := <-last:
		if s != "eof" {
			t.Fatalf("the page server saw %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the page server's connection survived the cut")
	}
	r.Close(0)
	within(t, 5*time.Second, "park", parked)
}

// The bandwidth cap paces what the page server sends.
func TestPacedConn(t *testing.T) {
	a, b := tcpPair(t)
	go func() {
		a.Write(make([]byte, 64<<10))
		a.Close()
	}()
	p := &pacedConn{c: b, bw: 256 << 10, start: time.Now()}
	n, err := io.Copy(io.Discard, p)
	if err != nil || n != 64<<10 {
		t.Fatalf("read %d, %v", n, err)
	}
	if took := time.Since(p.start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("64 KiB at 256 KiB/s took %v, want about 250ms", took)
	}
}
