package rootfs

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Copy copies the tree src into dst, which must not exist, with every owner mapped through m
// (src holds container-side ids, as unpacked from an image). Modes (setuid included), hard
// links, symlinks, FIFOs, times and the xattrs keepXattr allows are kept. Device nodes and sockets
// are skipped: runc makes /dev, and a device node in a container-owned tree is an escape hatch.
// Files are reflinked where the filesystem can, else copied in the kernel.
func Copy(ctx context.Context, src, dst string, m IDMap) error {
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	identity := func(id uint32) uint32 { return id }
	return walk(ctx, src, func(rel string, st *unix.Stat_t, links map[[2]uint64]string) error {
		from, to := filepath.Join(src, rel), filepath.Join(dst, rel)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if rel != "." {
				if err := os.Mkdir(to, 0o700); err != nil {
					return err
				}
			}
		case unix.S_IFREG:
			key := [2]uint64{st.Dev, st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				return os.Link(filepath.Join(dst, first), to)
			}
			if st.Nlink > 1 {
				links[key] = rel
			}
			if err := copyFile(from, to); err != nil {
				return err
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(from)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
		case unix.S_IFIFO:
			if err := unix.Mkfifo(to, 0o600); err != nil {
				return &pathError{"mkfifo", to, err}
			}
		default:
			return nil // devices, sockets
		}
		return setMeta(from, to, st, identity, m.ToHost)
	}, func(rel string, st *unix.Stat_t) error {
		return setTimes(filepath.Join(dst, rel), st)
	})
}

// Reshift re-owns the tree at dir in place from one id range to another (when a stopped
// container's security.privileged changes). Symlinks are never followed.
func Reshift(ctx context.Context, dir string, from, to IDMap) error {
	return reshift(ctx, dir, from, to, false)
}

// Adopt is Reshift for a tree made outside this package (an instance root on a storage pool):
// device nodes and sockets, which Copy never makes, are removed as well.
func Adopt(ctx context.Context, dir string, from, to IDMap) error {
	return reshift(ctx, dir, from, to, true)
}

func reshift(ctx context.Context, dir string, from, to IDMap, dropDevices bool) error {
	return walk(ctx, dir, func(rel string, st *unix.Stat_t, links map[[2]uint64]string) error {
		if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink > 1 {
			key := [2]uint64{st.Dev, st.Ino}
			if _, done := links[key]; done {
				return nil // shifted through its first name already
			}
			links[key] = rel
		}
		p := filepath.Join(dir, rel)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR, unix.S_IFREG, unix.S_IFLNK, unix.S_IFIFO:
		default:
			if dropDevices {
				return os.Remove(p)
			}
			return nil
		}
		return setMeta(p, p, st, from.ToContainer, to.ToHost)
	}, func(rel string, st *unix.Stat_t) error {
		return setTimes(filepath.Join(dir, rel), st)
	})
}

// walk calls visit for every entry of root in lexical order without following symlinks, then
// after(dir) for every directory deepest first (so directory times survive their children).
func walk(ctx context.Context, root string, visit func(rel string, st *unix.Stat_t, links map[[2]uint64]string) error,
	after func(rel string, st *unix.Stat_t) error) error {
	type dirEntry struct {
		rel string
		st  unix.Stat_t
	}
	var dirs []dirEntry
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return &pathError{"lstat", path, err}
		}
		if err := visit(rel, &st, links); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			dirs = append(dirs, dirEntry{rel, st})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := after(dirs[i].rel, &dirs[i].st); err != nil {
			return err
		}
	}
	return nil
}

// setMeta gives to the owner (mapped), mode, xattrs and (for non-directories) times of st. chown
// clears setuid bits and file capabilities, so it comes first.
func setMeta(from, to string, st *unix.Stat_t, toC, toHost func(uint32) uint32) error {
	xattrs, err := readXattrs(from, toC, toHost)
	if err != nil {
		return err
	}
	uid, gid := toHost(toC(st.Uid)), toHost(toC(st.Gid))
	if err := unix.Lchown(to, int(uid), int(gid)); err != nil {
		return &pathError{"lchown", to, err}
	}
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	if !isLink {
		if err := unix.Fchmodat(unix.AT_FDCWD, to, st.Mode&0o7777, 0); err != nil {
			return &pathError{"chmod", to, err}
		}
	}
	if err := writeXattrs(to, xattrs); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil
	}
	return setTimes(to, st)
}

func setTimes(path string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &pathError{"utimes", path, err}
	}
	return nil
}

// copyFile copies a regular file's data: a reflink when the filesystem shares extents (btrfs,
// xfs), else io.Copy, which uses copy_file_range.
func copyFile(from, to string) error {
	in, err := os.OpenFile(from, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return &pathError{"copy", from, err}
		}
	}
	return out.Close()
}
