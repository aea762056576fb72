package fsutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A process whose working directory is a tree, or that has a file open, holds it; once it is gone,
// nothing does. (A root held after pivot_root is the same dev/inode check; the system tests prove it
// with a real container.)
func TestHolders(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	file := filepath.Join(dir, "disk.img")
	if err := os.Mkdir(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{tree, file} {
		if hs, err := Holders(p); err != nil || len(hs) != 0 {
			t.Fatalf("%s before: %v %v", p, hs, err)
		}
	}
	// The calling process never counts, even holding the file.
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if hs, _ := Holders(file); len(hs) != 0 {
		t.Fatalf("own open counted: %v", hs)
	}

	cmd := exec.Command("sh", "-c", "exec 3<"+file+"; exec sleep 30")
	cmd.Dir = tree
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	var treeHs, fileHs []Holder
	for time.Now().Before(deadline) {
		treeHs, _ = Holders(tree)
		fileHs, _ = Holders(file)
		// Until sh has exec'd sleep: the name changes then.
		if len(treeHs) > 0 && len(fileHs) > 0 && strings.Contains(DescribeHolders(fileHs), "(sleep)") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(treeHs) != 1 || treeHs[0].PID != cmd.Process.Pid || treeHs[0].How != "cwd" {
		t.Fatalf("tree holders %+v, want pid %d cwd", treeHs, cmd.Process.Pid)
	}
	if len(fileHs) != 1 || fileHs[0].PID != cmd.Process.Pid || fileHs[0].How != "open" {
		t.Fatalf("file holders %+v, want pid %d open", fileHs, cmd.Process.Pid)
	}
	if s := DescribeHolders(fileHs); !strings.Contains(s, "(sleep) has it open") {
		t.Fatalf("description %q", s)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if hs, _ := Holders(tree); len(hs) != 0 {
		t.Fatalf("after exit: %v", hs)
	}
	if hs, err := Holders(filepath.Join(dir, "nope")); err != nil || hs != nil {
		t.Fatalf("missing path: %v %v", hs, err)
	}
}
