package container

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/containertest"
	"tandem/internal/testenv"
)

// An established TCP connection from outside (a client on the bridge) to a server in the
// container survives a stateful stop and start: the restore hook plugs eth0 in again and puts its
// address and routes back before CRIU reconnects the socket.
func TestCheckpointKeepsTCP(t *testing.T) {
	testenv.Require(t, realContainers...)
	n, err := containertest.NewNet(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Static = true
	e := newEnv(t, func(o *Options) { o.PrepareNetwork = n.PrepareNetwork })
	testenv.Require(t, "checkpoint")
	h := e.launch(t, "tcp", nil)
	e.waitLog(t, h, "booted as tcp")
	e.run(t, h, "nc -ll -p 7000 -e cat </dev/null >/dev/null 2>&1 &")
	c, err := containertest.DialEcho(n.Addr(h.ID)+":7000", 100*time.Millisecond, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WaitEcho(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ctx := testenv.Context(t, time.Minute)
	start := time.Now()
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatalf("stateful stop: %v", err)
	}
	if err := e.d.Start(ctx, h); err != nil {
		t.Fatalf("start (restore): %v", err)
	}
	frozen := time.Since(start)
	if err := c.WaitEcho(10 * time.Second); err != nil {
		t.Fatalf("after the restore: %v", err)
	}
	if err := c.Check(); err != nil {
		t.Error(err)
	}
	if n.Plugs(h.ID) != 2 {
		t.Errorf("PrepareNetwork ran %d times, want 2 (boot, restore)", n.Plugs(h.ID))
	}
	out, _ := e.run(t, h, "ip -o link show lo; ip -4 -o addr show dev eth0; ip route")
	for _, want := range []string{",UP", n.Addr(h.ID) + "/24", "default via " + n.HostIP} {
		if !strings.Contains(out, want) {
			t.Errorf("network inside after the restore lacks %q:\n%s", want, out)
		}
	}
	count, _ := c.Echoed()
	t.Logf("stop+start %v, %d echoes, longest gap %v", frozen, count, c.MaxGap())
}

// fakePageServer accepts one connection and records the requests it gets, answering a close
// with a status as CRIU does.
func fakePageServer(t *testing.T) (addr string, reqs chan uint32, eof chan error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reqs, eof = make(chan uint32, 16), make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			eof <- err
			return
		}
		defer c.Close()
		buf := make([]byte, psIOVSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				eof <- err
				return
			}
			cmd := binary.NativeEndian.Uint32(buf) & psCmdMask
			reqs <- cmd
			if cmd == psIOVClose {
				c.Write([]byte{0, 0, 0, 0})
			}
		}
	}()
	return ln.Addr().String(), reqs, eof
}

func iov(cmd uint32) []byte {
	b := make([]byte, psIOVSize)
	binary.NativeEndian.PutUint32(b, cmd)
	return b
}

// The proxy passes requests through, holds the destination's close until commit, and turns an
// abort into a request CRIU rejects.
func TestPageProxy(t *testing.T) {
	for _, commit := range []bool{true, false} {
		src, reqs, eof := fakePageServer(t)
		pp, err := startPageProxy("127.0.0.1:0", src)
		if err != nil {
			t.Fatal(err)
		}
		dst, err := net.Dial("tcp", pp.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		dst.Write(iov(7)) // PS_IOV_GET
		if got := <-reqs; got != 7 {
			t.Fatalf("forwarded %#x", got)
		}
		dst.Write(iov(psIOVClose))
		select {
		case got := <-reqs:
			t.Fatalf("close forwarded before commit (%#x)", got)
		case <-time.After(100 * time.Millisecond):
		}
		if commit {
			if err := pp.commit(testenv.Context(t, 5*time.Minute)); err != nil {
				t.Fatal(err)
			}
			if got := <-reqs; got != psIOVClose {
				t.Fatalf("after commit the server got %#x", got)
			}
			status := make([]byte, 4)
			if _, err := io.ReadFull(dst, status); err != nil {
				t.Fatalf("status to the destination: %v", err)
			}
			if err := <-eof; err != io.EOF {
				t.Fatalf("server side after commit: %v, want an orderly end", err)
			}
		} else {
			pp.abort()
			if got := <-reqs; got != psIOVBogus {
				t.Fatalf("abort sent %#x", got)
			}
		}
		dst.Close()
	}
	// A destination that goes away before it has every page is no commit.
	src, _, _ := fakePageServer(t)
	pp, err := startPageProxy("127.0.0.1:0", src)
	if err != nil {
		t.Fatal(err)
	}
	dst, _ := net.Dial("tcp", pp.ln.Addr().String())
	dst.Close()
	ctx := testenv.Context(t, 5*time.Second)
	if err := pp.commit(ctx); err == nil || !strings.Contains(err.Error(), "disconnected") {
		t.Fatalf("commit after the destination left: %v", err)
	}
	pp.abort()
}

// A daemon that died during a Dump leaves "dumping": Recover settles it by what it finds.
func TestRecoverSettlesDump(t *testing.T) {
	e := newEnv(t)
	testenv.Require(t, "checkpoint")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // a hung criu fails the test, not hangs it
	defer cancel()
	h := e.launch(t, "settle", nil)
	e.waitLog(t, h, "booted as settle")
	setDumping := func(dir string) {
		st, err := e.d.mustLoad(h)
		if err != nil {
			t.Fatal(err)
		}
		st.Migration, st.CheckpointDir, st.Checkpoint = migDumping, dir, false
		if err := e.d.save(h, st); err != nil {
			t.Fatal(err)
		}
	}
	// Still running: the dump failed.
	setDumping(t.TempDir())
	if err := e.d.Recover(ctx, h); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.d.mustLoad(h); st.Migration != "" || st.CheckpointDir != "" {
		t.Fatalf("running container after recovery: migration %q dir %q", st.Migration, st.CheckpointDir)
	}
	// Stopped with complete images: the dump succeeded, and the source can resume from them.
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatal(err)
	}
	setDumping(e.d.paths(h.ID).checkpoint)
	if err := e.d.Recover(ctx, h); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.d.mustLoad(h); st.Migration != migDumped || !st.Checkpoint {
		t.Fatalf("stopped container after recovery: migration %q checkpoint %v", st.Migration, st.Checkpoint)
	}
	if err := e.d.AbortDump(ctx, h); err != nil {
		t.Fatalf("resume on the source: %v", err)
	}
	if st, _ := e.d.State(ctx, h); st != driver.StatusRunning {
		t.Fatalf("after AbortDump: %s", st)
	}
}

// The lazy-pages guard passes its command's status on; a failed command's cgroup is swept (here
// one that does not exist: nothing to do).
func TestLazyGuard(t *testing.T) {
	if got := lazyGuardMain([]string{"/tandem-test-none", "true"}); got != 0 {
		t.Errorf("true: %d", got)
	}
	if got := lazyGuardMain([]string{"/tandem-test-none", "sh", "-c", "exit 3"}); got != 3 {
		t.Errorf("exit 3: %d", got)
	}
	if got := lazyGuardMain([]string{"/tandem-test-none"}); got != 2 {
		t.Errorf("no command: %d", got)
	}
}
