package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

// A copy is done here rather than with cp -a so that it reports progress, stops on ctx, never
// follows a symlink, reflinks where the filesystem can (btrfs, xfs) and keeps sparse files sparse.

// reporter turns bytes copied into progress.Report calls, one per percent.
type reporter struct {
	ctx         context.Context
	msg         string
	total, done int64
	last        int
}

func newReporter(ctx context.Context, msg string, total int64) *reporter {
	r := &reporter{ctx: ctx, msg: msg, total: total, last: -1}
	r.add(0)
	return r
}

func (r *reporter) add(n int64) {
	if r == nil {
		return
	}
	r.done += n
	pct := 100
	if r.total > 0 && r.done < r.total {
		pct = int(r.done * 100 / r.total)
	}
	if pct != r.last {
		r.last = pct
		progress.Report(r.ctx, pct, r.msg)
	}
}

// finish marks the work done (a snapshot copies nothing byte by byte).
func (r *reporter) finish() {
	if r != nil {
		r.add(r.total - r.done)
	}
}

// treeSize sums the sizes of the regular files under dir, each inode once.
func treeSize(dir string) (int64, error) {
	var total int64
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		key := [2]uint64{st.Dev, st.Ino}
		if !seen[key] {
			seen[key] = true
			total += st.Size
		}
		return nil
	})
	return total, err
}

// copyTree copies the contents of src into the existing directory dst, with owners, modes, times,
// xattrs, hard links, symlinks and device nodes, and gives dst src's own metadata.
func copyTree(ctx context.Context, src, dst string, rep *reporter) error {
	type dirMeta struct {
		src, dst string
		st       unix.Stat_t
	}
	var dirs []dirMeta
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return errors.Join(errdefs.ErrCancelled, err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if rel != "." {
				if err := os.Mkdir(target, 0o700); err != nil {
					return err
				}
			}
			dirs = append(dirs, dirMeta{p, target, st}) // metadata last, so children do not touch mtime
			return nil
		case unix.S_IFREG:
			key := [2]uint64{st.Dev, st.Ino}
			if st.Nlink > 1 {
				if first, ok := links[key]; ok {
					return os.Link(first, target)
				}
				links[key] = target
			}
			if err := copyFile(ctx, p, target, rep); err != nil {
				return err
			}
		case unix.S_IFLNK:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		default: // device nodes, fifos, sockets
			if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
				return fmt.Errorf("copy %s: %w", p, err)
			}
		}
		return copyMeta(p, target, &st)
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := copyMeta(dirs[i].src, dirs[i].dst, &dirs[i].st); err != nil {
			return err
		}
	}
	return nil
}

// copyMeta gives dst the owner, mode, xattrs and times of src (st is src's lstat).
func copyMeta(src, dst string, st *unix.Stat_t) error {
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil && (isRoot() || !errors.Is(err, unix.EPERM)) {
		return fmt.Errorf("chown %s: %w", dst, err)
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if !isLink { // after chown, which clears setuid bits
		if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod %s: %w", dst, err)
		}
	}
	if err := copyXattrs(src, dst); err != nil {
		return err
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// copyXattrs copies extended attributes (file capabilities, ACLs); ones the target cannot hold or
// an unprivileged copier may not set are skipped.
func copyXattrs(src, dst string) error {
	sz, err := unix.Llistxattr(src, nil)
	if err != nil || sz == 0 {
		return nil
	}
	buf := make([]byte, sz)
	if sz, err = unix.Llistxattr(src, buf); err != nil {
		return nil
	}
	for _, name := range splitNul(buf[:sz]) {
		vsz, err := unix.Lgetxattr(src, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, vsz)
		if vsz, err = unix.Lgetxattr(src, name, val); err != nil {
			continue
		}
		err = unix.Lsetxattr(dst, name, val[:vsz], 0)
		if err != nil && !errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("set xattr %s on %s: %w", name, dst, err)
		}
	}
	return nil
}

func splitNul(b []byte) []string {
	var out []string
	start := 0
	for i, c := range b {
		if c == 0 {
			if i > start {
				out = append(out, string(b[start:i]))
			}
			start = i + 1
		}
	}
	return out
}

// copyFile copies one regular file to a new dst: a reflink where possible, else its data extents
// only, so that a 10 GiB sparse image with 70 MiB in it copies 70 MiB.
func copyFile(ctx context.Context, src, dst string, rep *reporter) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	size := fi.Size()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		rep.add(size)
		return nil
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) { // only a hole is left
			break
		}
		if err != nil { // no SEEK_DATA here: copy everything
			data = off
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		rep.add(data - off)
		if err := copyRange(ctx, in, out, data, hole, rep); err != nil {
			return err
		}
		off = hole
	}
	if err := out.Truncate(size); err != nil {
		return err
	}
	return out.Sync()
}

// copyRange copies bytes [from, to) in chunks, in the kernel when it can.
func copyRange(ctx context.Context, in, out *os.File, from, to int64, rep *reporter) error {
	const chunk = 8 << 20
	var buf []byte
	for off := from; off < to; {
		if err := ctx.Err(); err != nil {
			return errors.Join(errdefs.ErrCancelled, err)
		}
		n := min(int64(chunk), to-off)
		roff, woff := off, off
		w, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(n), 0)
		if err != nil || w == 0 {
			if err != nil && !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.ENOSYS) &&
				!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EOPNOTSUPP) {
				return fmt.Errorf("copy %s: %w", in.Name(), err)
			}
			if buf == nil {
				buf = make([]byte, chunk)
			}
			r, rerr := in.ReadAt(buf[:n], off)
			if r == 0 && rerr != nil {
				return fmt.Errorf("copy %s: %w", in.Name(), rerr)
			}
			if w, err = out.WriteAt(buf[:r], off); err != nil {
				return fmt.Errorf("copy to %s: %w", out.Name(), err)
			}
		}
		off += int64(w)
		rep.add(int64(w))
	}
	return nil
}
