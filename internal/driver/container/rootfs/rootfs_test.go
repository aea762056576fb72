package rootfs

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"tandem/internal/testenv"

	"golang.org/x/sys/unix"
)

func TestCopyShiftsOwnersAndKeepsMetadata(t *testing.T) {
	testenv.Require(t, "root") // to chown
	src := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(src, "bin"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "bin", "su"), []byte("x"), 0o755))
	must(t, unix.Chmod(filepath.Join(src, "bin", "su"), 0o4755))
	must(t, os.WriteFile(filepath.Join(src, "bin", "ping"), []byte("p"), 0o755))
	caps := make([]byte, 20)
	binary.LittleEndian.PutUint32(caps, vfsCapRevision2|1)
	binary.LittleEndian.PutUint32(caps[4:], 1<<13) // CAP_NET_RAW
	must(t, unix.Setxattr(filepath.Join(src, "bin", "ping"), xattrCaps, caps, 0))
	must(t, os.Link(filepath.Join(src, "bin", "su"), filepath.Join(src, "bin", "su2")))
	must(t, os.Symlink("su", filepath.Join(src, "bin", "sh")))
	must(t, unix.Mkfifo(filepath.Join(src, "fifo"), 0o640))
	must(t, os.WriteFile(filepath.Join(src, "home"), []byte("h"), 0o600))
	must(t, os.Lchown(filepath.Join(src, "home"), 1000, 1000))
	must(t, unix.Setxattr(filepath.Join(src, "home"), "user.note", []byte("hi"), 0))
	must(t, unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))

	dst := filepath.Join(t.TempDir(), "rootfs")
	m := IDMap{Base: 1000000, Size: 65536}
	must(t, Copy(context.Background(), src, dst, m))

	st := stat(t, filepath.Join(dst, "bin", "su"))
	if st.Uid != 1000000 || st.Gid != 1000000 || st.Mode&0o7777 != 0o4755 {
		t.Errorf("su: uid %d gid %d mode %o", st.Uid, st.Gid, st.Mode&0o7777)
	}
	if st2 := stat(t, filepath.Join(dst, "bin", "su2")); st2.Ino != st.Ino {
		t.Error("hard link became two files")
	}
	if home := stat(t, filepath.Join(dst, "home")); home.Uid != 1001000 {
		t.Errorf("home uid %d", home.Uid)
	}
	if v, _ := getXattr(filepath.Join(dst, "home"), "user.note"); string(v) != "hi" {
		t.Errorf("user xattr %q", v)
	}
	v, err := getXattr(filepath.Join(dst, "bin", "ping"), xattrCaps)
	if err != nil || len(v) != 24 || binary.LittleEndian.Uint32(v[20:]) != 1000000 ||
		binary.LittleEndian.Uint32(v)&vfsCapRevisionMask != vfsCapRevision3 {
		t.Errorf("caps not converted to v3 with rootid: %x %v", v, err)
	}
	if l := lstat(t, filepath.Join(dst, "bin", "sh")); l.Uid != 1000000 || l.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("symlink %+v", l)
	}
	if f := stat(t, filepath.Join(dst, "fifo")); f.Mode&unix.S_IFMT != unix.S_IFIFO || f.Mode&0o777 != 0o640 {
		t.Errorf("fifo mode %o", f.Mode)
	}
	if _, err := os.Lstat(filepath.Join(dst, "null")); !os.IsNotExist(err) {
		t.Errorf("device node was copied: %v", err)
	}

	// Back to host ids (privileged) and the caps return to v2.
	must(t, Reshift(context.Background(), dst, m, IDMap{}))
	if st := stat(t, filepath.Join(dst, "bin", "su")); st.Uid != 0 || st.Mode&0o7777 != 0o4755 {
		t.Errorf("after reshift su: uid %d mode %o", st.Uid, st.Mode&0o7777)
	}
	if home := stat(t, filepath.Join(dst, "home")); home.Uid != 1000 {
		t.Errorf("after reshift home uid %d", home.Uid)
	}
	if v, _ := getXattr(filepath.Join(dst, "bin", "ping"), xattrCaps); len(v) != 20 {
		t.Errorf("caps after reshift: %x", v)
	}
}

func TestIDMap(t *testing.T) {
	m := IDMap{Base: 100, Size: 10}
	if m.ToHost(3) != 103 || m.ToHost(70000) != 100+overflowID || m.ToContainer(105) != 5 || m.ToContainer(5) != overflowID {
		t.Fatal("mapping")
	}
	if (IDMap{}).ToHost(7) != 7 {
		t.Fatal("identity")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func stat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Stat(p, &st))
	return st
}

func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return st
}
