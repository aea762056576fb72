package image

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"tandem/internal/hostexec"
	"tandem/internal/testenv"
)

// checkExt4 reads a file out of an ext4 image with debugfs (no mount needed).
func checkExt4(t *testing.T, img, path, want string) {
	t.Helper()
	debugfs, err := hostexec.Look("debugfs")
	if err != nil {
		t.Logf("debugfs not installed: contents not checked")
		return
	}
	out, err := exec.Command(debugfs, "-R", "cat "+path, img).Output()
	if err != nil || string(out) != want {
		t.Errorf("%s in %s: %q %v, want %q", path, img, out, err, want)
	}
}

func TestBuildRootDisk(t *testing.T) {
	testenv.Require(t, "e2fsprogs")
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc/hostname"), []byte("disk\n"), 0o644)
	os.Symlink("/bin/busybox", filepath.Join(src, "init"))
	out := filepath.Join(t.TempDir(), "root.qcow2")
	disk, err := BuildRootDisk(context.Background(), src, out, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("disk %s format %s size %d MiB", disk.Path, disk.Format, disk.Size>>20)
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("leftovers next to the disk: %v", entries)
	}
	head := make([]byte, 4)
	f, err := os.Open(disk.Path)
	if err != nil {
		t.Fatal(err)
	}
	f.Read(head)
	f.Close()
	switch disk.Format {
	case DiskQcow2:
		if !bytes.Equal(head, magicQcow2) {
			t.Error("not a qcow2 file")
		}
	case DiskRaw:
		if !strings.HasSuffix(disk.Path, ".raw") {
			t.Errorf("raw disk named %s", disk.Path)
		}
		checkExt4(t, disk.Path, "/etc/hostname", "disk\n")
		if _, err := hostexec.Look("qemu-img"); err != nil {
			t.Logf("qemu-img not installed: kept raw (%v)", err)
		}
	}
}
