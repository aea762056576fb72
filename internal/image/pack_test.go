package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"tandem/internal/testenv"

	"golang.org/x/sys/unix"
)

// TestPackRoundTrip packs a tree the way publish and the Debian builder do, imports it and unpacks
// it again: ownership, setuid, hardlinks, fifos and file capabilities survive, /dev contents do not.
func TestPackRoundTrip(t *testing.T) {
	testenv.Require(t, "root")
	src := t.TempDir()
	for _, d := range []string{"usr/bin", "home/u", "dev", "run"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
	}
	os.WriteFile(filepath.Join(src, "usr/bin/su"), []byte("su"), 0o755)
	os.Chmod(filepath.Join(src, "usr/bin/su"), 0o4755|os.ModeSetuid)
	os.WriteFile(filepath.Join(src, "home/u/f"), []byte("f"), 0o600)
	os.Chown(filepath.Join(src, "home/u/f"), 1000, 1000)
	os.Chown(filepath.Join(src, "home/u"), 1000, 1000)
	os.Link(filepath.Join(src, "usr/bin/su"), filepath.Join(src, "usr/bin/su-link"))
	os.Symlink("../usr/bin/su", filepath.Join(src, "run/su"))
	unix.Mkfifo(filepath.Join(src, "run/fifo"), 0o600)
	unix.Mkfifo(filepath.Join(src, "home/u/fifo"), 0o600)
	unix.Mknod(filepath.Join(src, "dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	// A file capability (cap_net_raw+ep, VFS_CAP_REVISION_2), as ping has.
	capv := []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	os.WriteFile(filepath.Join(src, "usr/bin/ping"), []byte("ping"), 0o755)
	capErr := unix.Setxattr(filepath.Join(src, "usr/bin/ping"), "security.capability", capv, 0)

	var buf bytes.Buffer
	meta := validMeta()
	if err := PackRootfs(context.Background(), &buf, src, &meta, PackOptions{SkipContents: DefaultSkipContents}); err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	img, err := s.Import(context.Background(), bytes.NewReader(buf.Bytes()), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "rootfs")
	if err := s.UnpackRootfs(context.Background(), img.Fingerprint, dst, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(dst, "usr/bin/su"), &st)
	if st.Mode&syscall.S_ISUID == 0 || st.Nlink != 2 {
		t.Errorf("su: mode %o nlink %d", st.Mode, st.Nlink)
	}
	syscall.Stat(filepath.Join(dst, "home/u/f"), &st)
	if st.Uid != 1000 || st.Gid != 1000 {
		t.Errorf("owner %d:%d", st.Uid, st.Gid)
	}
	if ents, _ := os.ReadDir(filepath.Join(dst, "dev")); len(ents) != 0 {
		t.Errorf("dev/ not empty: %v", ents)
	}
	if _, err := os.Lstat(filepath.Join(dst, "run/fifo")); err == nil {
		t.Error("run/ contents packed")
	}
	if fi, err := os.Lstat(filepath.Join(dst, "home/u/fifo")); err != nil || fi.Mode().Type() != os.ModeNamedPipe {
		t.Errorf("fifo: %v %v", fi, err)
	}
	if capErr == nil {
		got := make([]byte, 64)
		n, err := unix.Getxattr(filepath.Join(dst, "usr/bin/ping"), "security.capability", got)
		if err != nil || !bytes.Equal(got[:n], capv) {
			t.Errorf("file capability lost: %v", err)
		}
	} else {
		t.Logf("file capabilities not checked: %v", capErr)
	}
}

func TestPackUnshiftsIDs(t *testing.T) {
	o := PackOptions{IDBase: 1000000, IDSize: 65536}
	for host, want := range map[uint32]int{1000000: 0, 1001000: 1000, 1065535: 65535, 1065536: 1065536, 0: 0, 500: 500} {
		if got := o.unshift(host); got != want {
			t.Errorf("unshift(%d) = %d, want %d", host, got, want)
		}
	}
	if got := (PackOptions{}).unshift(1000000); got != 1000000 {
		t.Errorf("no shift: %d", got)
	}
}
