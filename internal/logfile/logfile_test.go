package logfile

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestRotating(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	l, err := Open(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	l.Write([]byte("123456"))
	l.Write([]byte("abcdef")) // would pass 10: rotates first
	l.Close()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if string(old) != "123456" || string(cur) != "abcdef" {
		t.Fatalf("old %q current %q", old, cur)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

// A writer that prints far more than the cap through the FIFO leaves at most twice the cap, the
// newest output last; the drain ends when the writer closes.
func TestDrainFIFOCaps(t *testing.T) {
	dir := t.TempDir()
	fifo, path := filepath.Join(dir, "console.fifo"), filepath.Join(dir, "console.log")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- DrainFIFO(fifo, path, 4096) }()
	w, err := os.OpenFile(fifo, os.O_WRONLY|os.O_APPEND, 0) // as QEMU opens its logfile
	if err != nil {
		t.Fatal(err)
	}
	line := bytes.Repeat([]byte("x"), 99)
	for i := 0; i < 1000; i++ { // 100 kB
		w.Write(append(line, '\n'))
	}
	w.Write([]byte("last line\n"))
	w.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the drain did not end when its writer closed")
	}
	cur, _ := os.ReadFile(path)
	old, _ := os.ReadFile(path + ".1")
	if len(cur) > 4096 || len(old) > 4096 || !bytes.HasSuffix(cur, []byte("last line\n")) {
		t.Fatalf("log %d bytes (ends %q), rotated %d bytes", len(cur), cur[max(0, len(cur)-20):], len(old))
	}
}

// A drain whose writer never comes ends at Release.
func TestDrainFIFORelease(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "console.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- DrainFIFO(fifo, filepath.Join(dir, "console.log"), 0) }()
	deadline := time.After(10 * time.Second)
	for {
		Release(fifo) // a no-op until the drain has opened the FIFO
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return
		case <-deadline:
			t.Fatal("the drain still waits after Release")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
