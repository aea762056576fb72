package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pair runs a Server on one end of a socketpair and returns a Client on the other.
func pair(t *testing.T) (*Client, *Server) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	guest := fileConn(t, fds[0])
	host := fileConn(t, fds[1])
	srv := &Server{}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { srv.Serve(ctx, guest); close(served) }()
	t.Cleanup(func() { cancel(); guest.Close(); <-served })
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	cl, err := NewClient(cctx, host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl, srv
}

func fileConn(t *testing.T, fd int) net.Conn {
	f := os.NewFile(uintptr(fd), "sock")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestExecExitCodesAndOutput(t *testing.T) {
	cl, _ := pair(t)
	for _, want := range []int{0, 1, 42} {
		var out, errb bytes.Buffer
		code, err := cl.Exec(ctxT(t, 10*time.Second), ExecRequest{
			Cmd:    []string{"sh", "-c", "echo out-$0; echo err-$0 >&2; exit $0", itoa(want)},
			Stdout: &out, Stderr: &errb,
		})
		if err != nil {
			t.Fatal(err)
		}
		if code != want || out.String() != "out-"+itoa(want)+"\n" || errb.String() != "err-"+itoa(want)+"\n" {
			t.Errorf("exit %d out %q err %q, want %d", code, out.String(), errb.String(), want)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// A megabyte through cat exercises the window both ways.
func TestExecStdinRoundTripAndFlowControl(t *testing.T) {
	cl, _ := pair(t)
	in := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var out bytes.Buffer
	code, err := cl.Exec(ctxT(t, 30*time.Second), ExecRequest{Cmd: []string{"cat"}, Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("got %d bytes back, want %d identical", out.Len(), len(in))
	}
}

// A slow reader on one stream must not stall another request on the same connection.
func TestSlowStreamDoesNotBlockOthers(t *testing.T) {
	cl, _ := pair(t)
	pr, pw := io.Pipe() // nobody reads it until the end
	bigDone := make(chan error, 1)
	go func() {
		_, err := cl.Exec(ctxT(t, 30*time.Second), ExecRequest{Cmd: []string{"head", "-c", "4000000", "/dev/zero"}, Stdout: pw})
		pw.Close()
		bigDone <- err
	}()
	time.Sleep(200 * time.Millisecond)
	var out bytes.Buffer
	code, err := cl.Exec(ctxT(t, 5*time.Second), ExecRequest{Cmd: []string{"echo", "quick"}, Stdout: &out})
	if err != nil || code != 0 || out.String() != "quick\n" {
		t.Fatalf("second exec while the first is stalled: %d %q %v", code, out.String(), err)
	}
	n, _ := io.Copy(io.Discard, pr)
	if err := <-bigDone; err != nil || n != 4000000 {
		t.Fatalf("stalled exec: %d bytes, %v", n, err)
	}
}

func TestExecTTY(t *testing.T) {
	if _, err := os.Stat("/dev/ptmx"); err != nil {
		t.Skip("skipping: no /dev/ptmx")
	}
	cl, _ := pair(t)
	var out bytes.Buffer
	code, err := cl.Exec(ctxT(t, 10*time.Second), ExecRequest{
		Cmd: []string{"sh", "-c", "test -t 0 && test -t 1 && echo isatty; stty size; exit 3"},
		TTY: true, Rows: 33, Cols: 101, Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if code != 3 || !strings.Contains(out.String(), "isatty") || !strings.Contains(out.String(), "33 101") {
		t.Fatalf("code %d output %q", code, out.String())
	}
}

func TestExecCancelKills(t *testing.T) {
	cl, _ := pair(t)
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := cl.Exec(ctx, ExecRequest{Cmd: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 100"}})
		done <- err
	}()
	var pid int
	for i := 0; i < 100 && pid == 0; i++ {
		time.Sleep(50 * time.Millisecond)
		b, _ := os.ReadFile(pidFile)
		pid = atoi(strings.TrimSpace(string(b)))
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("cancelled exec returned no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled exec did not return")
	}
	for i := 0; i < 50; i++ {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("process %d survived the cancel", pid)
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// A command that leaves a daemon holding its stdout still returns.
func TestExecBackgroundChildDoesNotHang(t *testing.T) {
	cl, _ := pair(t)
	var out bytes.Buffer
	start := time.Now()
	code, err := cl.Exec(ctxT(t, 15*time.Second), ExecRequest{Cmd: []string{"sh", "-c", "sleep 30 & echo hi"}, Stdout: &out})
	if err != nil || code != 0 || out.String() != "hi\n" {
		t.Fatalf("%d %q %v", code, out.String(), err)
	}
	if d := time.Since(start); d > 2*drainGrace+time.Second {
		t.Errorf("took %v", d)
	}
}

func TestExecNotFound(t *testing.T) {
	cl, _ := pair(t)
	_, err := cl.Exec(ctxT(t, 5*time.Second), ExecRequest{Cmd: []string{"no-such-command-here"}})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("err %v", err)
	}
}

func TestInfo(t *testing.T) {
	cl, _ := pair(t)
	info, err := cl.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if info.Hostname != host || info.Kernel == "" || info.AgentVersion != Version {
		t.Fatalf("info %+v", info)
	}
}

func TestPushPull(t *testing.T) {
	cl, _ := pair(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "f.bin")
	data := bytes.Repeat([]byte{1, 2, 3, 250}, 300000)
	if err := cl.Push(ctxT(t, 10*time.Second), path, bytes.NewReader(data), FileOpts{Mode: 0o640, UID: 0, GID: 0}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("pushed file %v %v", fi, err)
	}
	var back bytes.Buffer
	info, err := cl.Pull(ctxT(t, 10*time.Second), path, &back)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(back.Bytes()) != sha256.Sum256(data) || info.Mode != 0o640 || info.Size != int64(len(data)) {
		t.Fatalf("pulled %d bytes, info %+v", back.Len(), info)
	}
	if err := cl.Push(ctxT(t, 5*time.Second), "relative/path", strings.NewReader("x"), FileOpts{}); err == nil {
		t.Error("push to a relative path succeeded")
	}
	if _, err := cl.Pull(ctxT(t, 5*time.Second), filepath.Join(dir, "missing"), io.Discard); err == nil {
		t.Error("pull of a missing file succeeded")
	}
	if _, err := cl.Pull(ctxT(t, 5*time.Second), dir, io.Discard); err == nil {
		t.Error("pull of a directory succeeded")
	}
}

// Garbage before the hello (a torn line from an earlier connection) is skipped.
func TestResyncAfterGarbage(t *testing.T) {
	fds, _ := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	guest, host := fileConn(t, fds[0]), fileConn(t, fds[1])
	defer guest.Close()
	srv := &Server{}
	go srv.Serve(context.Background(), guest)
	host.Write([]byte(`{"t":"exec","id":7,"exec":{"cmd":["touch","/tmp/SHOULD-NOT`)) // torn, and before hello
	cl, err := NewClient(ctxT(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Info(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// A request sent before the hello (left over from an earlier host) is ignored.
func TestRequestsBeforeHelloIgnored(t *testing.T) {
	fds, _ := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	guest, host := fileConn(t, fds[0]), fileConn(t, fds[1])
	defer guest.Close()
	marker := filepath.Join(t.TempDir(), "ran")
	srv := &Server{}
	go srv.Serve(context.Background(), guest)
	host.Write([]byte("\n{\"t\":\"exec\",\"id\":7,\"exec\":{\"cmd\":[\"touch\",\"" + marker + "\"]}}\n"))
	cl, err := NewClient(ctxT(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cl.Info(ctxT(t, 5*time.Second))
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("a request from before the hello ran")
	}
}

// A new agent process on the same port (the guest rebooted) makes the host shake hands again: the
// request the old agent was running fails, later ones work.
func TestAgentRestartRehandshakes(t *testing.T) {
	fds, _ := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	guest, host := fileConn(t, fds[0]), fileConn(t, fds[1])
	defer guest.Close()
	old := &Server{}
	oldDone := make(chan struct{})
	go func() { old.Serve(context.Background(), guest); close(oldDone) }()
	cl, err := NewClient(ctxT(t, 5*time.Second), host)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	running := make(chan error, 1)
	go func() {
		_, err := cl.Exec(ctxT(t, 20*time.Second), ExecRequest{Cmd: []string{"sleep", "30"}})
		running <- err
	}()
	time.Sleep(300 * time.Millisecond)
	guest.SetReadDeadline(time.Unix(1, 0)) // the old agent dies
	<-oldDone
	guest.SetReadDeadline(time.Time{})
	go (&Server{}).Serve(context.Background(), guest)
	select {
	case err := <-running:
		if err == nil || !strings.Contains(err.Error(), "restarted") {
			t.Fatalf("exec across the restart: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old agent's request never failed")
	}
	var out bytes.Buffer
	if code, err := cl.Exec(ctxT(t, 10*time.Second), ExecRequest{Cmd: []string{"echo", "new"}, Stdout: &out}); err != nil || code != 0 || out.String() != "new\n" {
		t.Fatalf("exec after the restart: %d %q %v", code, out.String(), err)
	}
}
