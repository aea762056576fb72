package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/testenv"
)

// TestUnpackPreserves checks ownership, modes (setuid too), mtimes, links, fifos and xattrs.
func TestUnpackPreserves(t *testing.T) {
	testenv.Require(t, "root")
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	capHdr := file("rootfs/usr/bin/ping")
	capHdr.PAXRecords = map[string]string{"SCHILY.xattr.user.tandem": "yes"}
	extra := []*tar.Header{
		{Name: "rootfs/usr/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 0, Gid: 0, ModTime: old},
		{Name: "rootfs/usr/bin/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 0, Gid: 4, ModTime: old},
		{Name: "rootfs/usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 0, Gid: 0, ModTime: old},
		{Name: "rootfs/home/user/notes", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000, ModTime: old},
		capHdr,
		symlink("rootfs/etc/localtime", "/usr/share/zoneinfo/UTC"), // absolute: fine inside a rootfs
		symlink("rootfs/etc/os-release", "../usr/lib/os-release"),
		hardlink("rootfs/usr/bin/su2", "rootfs/usr/bin/su"),
		{Name: "rootfs/run/initctl", Typeflag: tar.TypeFifo, Mode: 0o600},
		{Name: "rootfs/tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
		symlink("rootfs/etc/motd", "/etc/shadow"),
		file("rootfs/etc/motd"), // a later member replaces an earlier symlink, not writing through it
	}
	body := map[string][]byte{"rootfs/usr/bin/su": []byte("#!/bin/sh\n"), "rootfs/home/user/notes": []byte("n"),
		"rootfs/usr/bin/ping": []byte("ping"), "rootfs/etc/motd": []byte("hi\n")}
	data := unifiedImage(t, CompressionZstd, extra, body)
	target := filepath.Join(t.TempDir(), "rootfs")
	if err := Unpack(context.Background(), bytes.NewReader(data), target, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	check := func(rel string, mode os.FileMode, uid, gid uint32) {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(target, rel))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != mode || st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: mode %v uid %d gid %d, want %v %d %d", rel, fi.Mode(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	check("usr/bin/su", 0o755|os.ModeSetuid, 0, 0)
	check("usr/bin", os.ModeDir|0o750, 0, 4)
	check("home/user/notes", 0o600, 1000, 1000)
	check("run/initctl", os.ModeNamedPipe|0o600, 0, 0)
	check("tmp", os.ModeDir|os.ModeSticky|0o777, 0, 0)
	check(".", os.ModeDir|0o755, 0, 0)
	if fi, _ := os.Stat(filepath.Join(target, "usr/bin")); !fi.ModTime().Equal(old) {
		t.Errorf("dir mtime %v, want %v", fi.ModTime(), old)
	}
	if fi, _ := os.Stat(filepath.Join(target, "usr/bin/su")); !fi.ModTime().Equal(old) {
		t.Errorf("file mtime %v, want %v", fi.ModTime(), old)
	}
	if l, _ := os.Readlink(filepath.Join(target, "etc/localtime")); l != "/usr/share/zoneinfo/UTC" {
		t.Errorf("symlink %q", l)
	}
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(target, "usr/bin/su"), &a)
	syscall.Stat(filepath.Join(target, "usr/bin/su2"), &b)
	if a.Ino != b.Ino {
		t.Error("hardlink is a copy")
	}
	if fi, err := os.Lstat(filepath.Join(target, "etc/motd")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("symlink replaced by a file: %v %v", fi, err)
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(target, "usr/bin/ping"), "user.tandem", buf); err == nil && string(buf[:n]) != "yes" {
		t.Errorf("xattr %q", buf[:n])
	} else if err != nil {
		t.Logf("xattr not checked: %v (filesystem may not support user xattrs)", err)
	}
	// No temporary directory is left next to the target.
	ents, _ := os.ReadDir(filepath.Dir(target))
	if len(ents) != 1 {
		t.Errorf("leftovers next to target: %v", ents)
	}
	// A non-empty target is refused, an empty directory is filled.
	if err := Unpack(context.Background(), bytes.NewReader(data), target, UnpackOptions{}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("unpack over non-empty target: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.Mkdir(empty, 0o755)
	if err := Unpack(context.Background(), bytes.NewReader(data), empty, UnpackOptions{}); err != nil {
		t.Errorf("unpack into empty dir: %v", err)
	}
}

func TestUnpackRootfsFromStore(t *testing.T) {
	testenv.Require(t, "root")
	s := openStore(t)
	img, err := s.Import(context.Background(), bytes.NewReader(unifiedImage(t, CompressionGzip, nil, nil)), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "c1")
	if err := s.UnpackRootfs(context.Background(), img.Fingerprint[:12], target, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(target, "etc/hostname")); string(got) != "test\n" {
		t.Errorf("hostname %q", got)
	}
}

func TestUnpackCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	parent := t.TempDir()
	err := Unpack(ctx, bytes.NewReader(unifiedImage(t, CompressionZstd, nil, nil)), filepath.Join(parent, "r"), UnpackOptions{IgnoreOwnership: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled unpack: %v", err)
	}
	assertDirEmpty(t, parent)
}

func TestImportURL(t *testing.T) {
	good := unifiedImage(t, CompressionZstd, nil, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good.tar.zst":
			w.Write(good)
		case "/short":
			w.Header().Set("Content-Length", "100000")
			w.Write(good[:100])
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	s := openStore(t)
	ctx := context.Background()
	_, err := s.ImportURL(ctx, srv.URL+"/good.tar.zst", strings.Repeat("ab", 32), ImportOptions{})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("mismatch: %v", err)
	}
	assertStoreEmpty(t, s)
	if _, err := s.ImportURL(ctx, srv.URL+"/good.tar.zst", "", ImportOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("missing checksum: %v", err)
	}
	if _, err := s.ImportURL(ctx, "file:///etc/passwd", sha(good), ImportOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("file URL: %v", err)
	}
	if _, err := s.ImportURL(ctx, srv.URL+"/missing", sha(good), ImportOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("404: %v", err)
	}
	if _, err := s.ImportURL(ctx, srv.URL+"/short", sha(good), ImportOptions{}); err == nil {
		t.Error("short download accepted")
	}
	assertStoreEmpty(t, s)
	img, err := s.ImportURL(ctx, srv.URL+"/good.tar.zst", sha(good), ImportOptions{Aliases: []string{"web"}})
	if err != nil || img.Fingerprint != sha(good) {
		t.Fatalf("good import: %v", err)
	}
}
