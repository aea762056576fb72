package storage

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem/internal/testenv"
)

// newManager opens a manager on dir (made under t.TempDir when empty).
func newManager(t *testing.T, dir, host string) *Manager {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "storage")
	}
	m, err := NewManager(Options{Dir: dir, HostID: host, LeaseTTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// defaultPool opens a manager with its default dir pool.
func defaultPool(t *testing.T) (*Manager, context.Context) {
	t.Helper()
	m := newManager(t, "", "host-a")
	ctx := testenv.Context(t, 2*time.Minute)
	if _, err := m.EnsureDefault(ctx); err != nil {
		t.Fatal(err)
	}
	return m, ctx
}

func wantKind(t *testing.T, err, kind error, words ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v: want kind %v", err, kind)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not mention %q", err, w)
		}
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// qemuVirtualSize reads a qcow2 disk's virtual size.
func qemuVirtualSize(t *testing.T, file string) uint64 {
	t.Helper()
	info, err := qemuImgInfo(context.Background(), file, "qcow2")
	if err != nil {
		t.Fatal(err)
	}
	return info.VirtualSize
}

// ext4Blocks reads the block count and size of an ext4 image with dumpe2fs.
func ext4Size(t *testing.T, file string) uint64 {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", file).CombinedOutput()
	if err != nil {
		t.Fatalf("dumpe2fs: %v: %s", err, out)
	}
	var count, size uint64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Block count":
			count = parseU(v)
		case "Block size":
			size = parseU(v)
		}
	}
	return count * size
}

func parseU(s string) uint64 {
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
