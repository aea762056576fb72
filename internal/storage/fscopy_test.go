package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
)

func TestCopyTreeKeepsMetadata(t *testing.T) {
	src, dst := filepath.Join(t.TempDir(), "src"), filepath.Join(t.TempDir(), "dst")
	writeFile(t, src+"/d/f", "data")
	unix.Chmod(src+"/d/f", 0o4711)
	os.Symlink("/nowhere", src+"/dangling")
	xattr := unix.Setxattr(src+"/d/f", "user.test", []byte("v"), 0) == nil
	// A sparse file: 64 MiB with 4 KiB of data.
	f, _ := os.Create(src + "/sparse")
	f.WriteAt([]byte("end"), 64<<20-3)
	f.Close()
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	os.Chtimes(src+"/d", old, old)
	os.Mkdir(dst, 0o700)

	if err := copyTree(context.Background(), src, dst, nil); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dst + "/d/f")
	di, _ := os.Stat(dst + "/d")
	link, _ := os.Readlink(dst + "/dangling")
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o711 || !di.ModTime().Equal(old) || link != "/nowhere" {
		t.Fatalf("mode %v, dir mtime %v, link %q", fi.Mode(), di.ModTime(), link)
	}
	if xattr {
		buf := make([]byte, 8)
		if n, err := unix.Getxattr(dst+"/d/f", "user.test", buf); err != nil || string(buf[:n]) != "v" {
			t.Fatalf("xattr: %q %v", buf[:n], err)
		}
	}
	var st unix.Stat_t
	unix.Stat(dst+"/sparse", &st)
	if st.Size != 64<<20 || st.Blocks*512 > 1<<20 {
		t.Fatalf("sparse copy: size %d, %d bytes allocated", st.Size, st.Blocks*512)
	}
	if readFile(t, dst+"/sparse")[64<<20-3:] != "end" {
		t.Fatal("sparse copy lost its data")
	}
}

func TestCopyCancelled(t *testing.T) {
	src := filepath.Join(t.TempDir(), "big")
	writeFile(t, src, string(make([]byte, 32<<20)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := copyFile(ctx, src, src+".copy", nil)
	if !errors.Is(err, errdefs.ErrCancelled) && err != nil {
		t.Fatalf("cancelled copy: %v", err)
	}
}
