package migrate

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"tandem/internal/testenv"
	"testing"
	"time"
)

// pipeTunnel stands in for an HTTPS tunnel: each open gets one end of a socket pair whose other
// end runs the destination's rsync server for dst.
func pipeTunnel(t *testing.T, dst string) func(context.Context) (io.ReadWriteCloser, error) {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		go func() {
			if err := serveRsync(ctx, b, dst, t.TempDir()); err != nil {
				t.Logf("server: %v", err)
			}
		}()
		return a, nil
	}
}

func TestRsyncThroughTunnelKeepsTreeAndDeletes(t *testing.T) {
	for _, tool := range []string{"rsync", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s is not installed (scripts/setup.sh installs it)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src, dst := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc", "a"), []byte("alpha"), 0o640))
	must(os.Link(filepath.Join(src, "etc", "a"), filepath.Join(src, "etc", "a-link")))
	must(os.Symlink("/etc/a", filepath.Join(src, "abs-link")))
	must(os.WriteFile(filepath.Join(dst, "stale"), []byte("x"), 0o600))
	root := os.Geteuid() == 0
	if root {
		must(os.Lchown(filepath.Join(src, "etc", "a"), 100123, 100456))
	}

	sock := filepath.Join(t.TempDir(), "r.sock")
	f, err := forward(ctx, sock, pipeTunnel(t, dst), nil)
	must(err)
	var last int
	must(rsyncTo(ctx, src, rsyncOpts{Socket: sock, Progress: func(p int) { last = p }}))
	f.Close()

	if b, err := os.ReadFile(filepath.Join(dst, "etc", "a")); err != nil || string(b) != "alpha" {
		t.Fatalf("etc/a = %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "abs-link")); err != nil || l != "/etc/a" {
		t.Fatalf("symlink = %q, %v (must not be munged)", l, err)
	}
	if _, err := os.Stat(filepath.Join(dst, "stale")); !os.IsNotExist(err) {
		t.Fatalf("a file the source lacks was kept: %v", err)
	}
	a, _ := os.Stat(filepath.Join(dst, "etc", "a"))
	b, _ := os.Stat(filepath.Join(dst, "etc", "a-link"))
	if !os.SameFile(a, b) {
		t.Fatal("hard link became two files")
	}
	if root {
		st := a.Sys().(*syscall.Stat_t)
		if st.Uid != 100123 || st.Gid != 100456 {
			t.Fatalf("owner %d:%d, want 100123:100456 (numeric ids)", st.Uid, st.Gid)
		}
	}
	if last != 100 {
		t.Fatalf("last progress %d%%, want 100", last)
	}
	if f.sent.Load() == 0 {
		t.Fatal("forwarder counted no bytes")
	}
}

// A move copies its rootfs and its dump side by side: two servers of one migration (one state dir)
// must each write where their own endpoint says.
func TestRsyncServersSideBySide(t *testing.T) {
	for _, tool := range []string{"rsync", "socat"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, "%s is not installed (scripts/setup.sh installs it)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	state := t.TempDir()
	var srcs, dsts [2]string
	for i := range srcs {
		srcs[i], dsts[i] = t.TempDir(), t.TempDir()
		for j := 0; j < 50; j++ {
			os.WriteFile(filepath.Join(srcs[i], fmt.Sprintf("f%d-%d", i, j)), []byte("x"), 0o644)
		}
	}
	errs := make(chan error, 2)
	for i := range srcs {
		go func() {
			dst := dsts[i]
			open := func(ctx context.Context) (io.ReadWriteCloser, error) {
				a, b := net.Pipe()
				go serveRsync(ctx, b, dst, state)
				return a, nil
			}
			sock := filepath.Join(t.TempDir(), "s.sock")
			f, err := forward(ctx, sock, open, nil)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			errs <- rsyncTo(ctx, srcs[i], rsyncOpts{Socket: sock})
		}()
	}
	for range srcs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := range dsts {
		entries, _ := os.ReadDir(dsts[i])
		if len(entries) != 50 {
			t.Fatalf("destination %d holds %d files, want its own 50", i, len(entries))
		}
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), fmt.Sprintf("f%d-", i)) {
				t.Fatalf("destination %d got %s", i, e.Name())
			}
		}
	}
}
