package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/logctx"
)

// UnpackOptions bound and tune Unpack.
type UnpackOptions struct {
	Limits
	// IgnoreOwnership leaves files owned by the caller (for unprivileged use); by default the
	// uid/gid recorded in the archive are applied, which needs root.
	IgnoreOwnership bool
}

// Unpack extracts the rootfs/ of an image archive read from r into target, which must not exist
// (or be an empty directory). It extracts into a temporary directory next to target and renames it
// into place only when everything succeeded, so an error leaves nothing behind. See the package
// documentation for what is rejected.
func Unpack(ctx context.Context, r io.Reader, target string, opts UnpackOptions) (err error) {
	target = filepath.Clean(target)
	if err := checkTarget(target); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(target), "."+filepath.Base(target)+".unpack-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if rerr := os.RemoveAll(tmp); rerr != nil {
				logctx.From(ctx).Warn("image: cannot remove partial unpack", "dir", tmp, "err", rerr)
			}
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes 0700; an archive may not say
		return err
	}
	x, err := newExtractor(tmp, opts)
	if err != nil {
		return err
	}
	defer x.close()
	res, err := walkArchive(ctx, r, opts.Limits, walkHandlers{rootfs: x.extract})
	if err != nil {
		return err
	}
	if res.format != FormatUnified {
		return errdefs.Invalid("image has no rootfs/ (it is a %s image)", res.format)
	}
	if err := x.finishDirs(); err != nil {
		return err
	}
	// One syncfs instead of an fsync per file: the rename below must not be durable before the data.
	if err := syncFS(tmp); err != nil {
		return err
	}
	// rename(2), not os.Rename: Go refuses to replace a directory, the system call replaces an
	// empty one (a pool may have created the target already).
	if err := unix.Rename(tmp, target); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return errdefs.Exists("unpack target %s exists and is not empty", target)
		}
		return fmt.Errorf("rename %s to %s: %w", tmp, target, err)
	}
	return fsutil.SyncDir(filepath.Dir(target))
}

func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

func checkTarget(target string) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return errdefs.Exists("unpack target %s exists and is not a directory", target)
	}
	ents, err := os.ReadDir(target)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return errdefs.Exists("unpack target %s exists and is not empty", target)
	}
	return nil
}

// extractor creates members with *at system calls relative to an fd of the new root, opening every
// path component with O_NOFOLLOW: a symlink in the archive can never redirect a write.
type extractor struct {
	root     int
	rootPath string
	opts     UnpackOptions
	dirs     []dirRecord // directory metadata, applied last (creating children changes mtimes)
	dirIndex map[string]int
}

func newExtractor(dir string, opts UnpackOptions) (*extractor, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return &extractor{root: fd, rootPath: dir, opts: opts, dirIndex: map[string]int{}}, nil
}

func (x *extractor) close() { unix.Close(x.root) }

// openDir walks rel (a clean relative path) from the root without following symlinks, creating
// missing directories (archives may omit parents). The caller closes the returned fd.
func (x *extractor) openDir(member, rel string) (int, error) {
	fd, err := unix.Openat(x.root, ".", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if rel == "" || rel == "." {
		return fd, nil
	}
	for _, comp := range strings.Split(rel, "/") {
		next, err := unix.Openat(fd, comp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			if err = unix.Mkdirat(fd, comp, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, comp, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			}
		}
		if err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return -1, memberErr(member, "a parent of it is a symlink or not a directory: refusing to write through it")
			}
			return -1, err
		}
		unix.Close(fd)
		fd = next
	}
	return fd, nil
}

// extract creates one member.
func (x *extractor) extract(m *member, content io.Reader) error {
	hdr := m.hdr
	if m.rel == "" {
		x.recordDir(m.rel, hdr)
		return nil
	}
	dir, base := path.Split(m.rel)
	pfd, err := x.openDir(hdr.Name, strings.TrimSuffix(dir, "/"))
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if hdr.Typeflag == tar.TypeDir {
		return x.mkdir(pfd, base, m)
	}
	// Tar semantics: a later member replaces an earlier non-directory of the same name.
	if err := unix.Unlinkat(pfd, base, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("replace existing entry: %w", err)
	}
	mode := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse: // tar.Reader reads the legacy TypeRegA as TypeReg
		return x.writeFile(pfd, base, hdr, content)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return err
		}
	case tar.TypeLink:
		tdir, tbase := path.Split(m.linkRel)
		tfd, err := x.openDir(hdr.Name, strings.TrimSuffix(tdir, "/"))
		if err != nil {
			return err
		}
		defer unix.Close(tfd)
		// flags 0: a hardlink to a symlink links the symlink itself, never its target.
		return unix.Linkat(tfd, tbase, pfd, base, 0)
	case tar.TypeFifo:
		if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
			return err
		}
	case tar.TypeChar, tar.TypeBlock:
		t := uint32(unix.S_IFCHR)
		if hdr.Typeflag == tar.TypeBlock {
			t = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, t|0o600, int(dev)); err != nil {
			return err
		}
	}
	if err := x.chown(pfd, base, hdr); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// Mode after chown: chown clears setuid/setgid. The entry is ours, created just now.
		if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
			return err
		}
	}
	return setTimes(pfd, base, hdr)
}

func (x *extractor) mkdir(pfd int, base string, m *member) error {
	err := unix.Mkdirat(pfd, base, 0o755)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err = unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			// An earlier non-directory of this name: replace it.
			if err = unix.Unlinkat(pfd, base, 0); err == nil {
				err = unix.Mkdirat(pfd, base, 0o755)
			}
		}
	}
	if err != nil {
		return err
	}
	x.recordDir(m.rel, m.hdr)
	return nil
}

type dirRecord struct {
	rel string
	hdr *tar.Header
}

func (x *extractor) recordDir(rel string, hdr *tar.Header) {
	if i, ok := x.dirIndex[rel]; ok {
		x.dirs[i].hdr = hdr
		return
	}
	x.dirIndex[rel] = len(x.dirs)
	x.dirs = append(x.dirs, dirRecord{rel, hdr})
}

func (x *extractor) writeFile(pfd int, base string, hdr *tar.Header, content io.Reader) error {
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), hdr.Name)
	defer f.Close()
	if _, err := io.Copy(f, content); err != nil {
		return err
	}
	if !x.opts.IgnoreOwnership {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := f.Chmod(tarMode(hdr)); err != nil {
		return err
	}
	// xattrs last: chown drops security.capability.
	setXattrs(hdr, func(name string, value []byte) error { return unix.Fsetxattr(fd, name, value, 0) })
	return setTimes(pfd, base, hdr)
}

// tarMode converts the tar permission bits (setuid, setgid, sticky included) to an os.FileMode.
func tarMode(hdr *tar.Header) os.FileMode {
	mode := os.FileMode(hdr.Mode & 0o777)
	if hdr.Mode&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if hdr.Mode&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

func (x *extractor) chown(pfd int, base string, hdr *tar.Header) error {
	if x.opts.IgnoreOwnership {
		return nil
	}
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	return nil
}

func setTimes(pfd int, base string, hdr *tar.Header) error {
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if !hdr.AccessTime.IsZero() {
		ts[0] = unix.NsecToTimespec(hdr.AccessTime.UnixNano())
	}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// keptXattrs are the extended attributes worth restoring: file capabilities (ping) and user data.
// Others (security.selinux, trusted.*) belong to the host's policy, not the image.
func keptXattr(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "user.")
}

func setXattrs(hdr *tar.Header, set func(name string, value []byte) error) {
	for k, v := range hdr.PAXRecords {
		name, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || !keptXattr(name) {
			continue
		}
		if err := set(name, []byte(v)); err != nil {
			slog.Warn("image: cannot set xattr", "member", hdr.Name, "xattr", name, "err", err)
		}
	}
}

// finishDirs applies directory ownership, modes, xattrs and mtimes once nothing else will be created.
func (x *extractor) finishDirs() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if err := x.finishDir(d.rel, d.hdr); err != nil {
			return fmt.Errorf("member %q: %w", d.hdr.Name, err)
		}
	}
	return nil
}

func (x *extractor) finishDir(rel string, hdr *tar.Header) error {
	pfd, err := x.openDir(hdr.Name, rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	// Reopen the O_PATH fd for real through /proc/self/fd, which names exactly this directory.
	f, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", pfd))
	if err != nil {
		return err
	}
	defer f.Close()
	if !x.opts.IgnoreOwnership {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := f.Chmod(tarMode(hdr) | os.ModeDir); err != nil {
		return err
	}
	setXattrs(hdr, func(name string, value []byte) error { return unix.Fsetxattr(int(f.Fd()), name, value, 0) })
	mt := hdr.ModTime
	if mt.IsZero() {
		mt = time.Now()
	}
	ts := []unix.Timespec{unix.NsecToTimespec(mt.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	return unix.UtimesNano(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), ts)
}
