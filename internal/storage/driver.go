package storage

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
)

// poolDriver is what differs between pool drivers: how the pool's root comes to exist, how a
// filesystem volume is stored, and how a volume's data directory is made, cloned and capped.
// Everything else (records, formats, snapshots, copies, leases) is shared code.
type poolDriver interface {
	// initPool makes p.Path usable (a directory; a formatted, mounted loop file; a checked mount).
	initPool(ctx context.Context, p *Pool) error
	// mountPool makes p.Path usable again after a reboot; a no-op when it is.
	mountPool(ctx context.Context, p *Pool) error
	// destroyPool undoes initPool once tandem's own files are gone from p.Path.
	destroyPool(ctx context.Context, p *Pool) error
	// check says why the root is not usable right now (nil when it is).
	check(p *Pool) error
	// fsFormat is how a filesystem volume of this type and size (0: unset) is stored.
	fsFormat(typ string, size uint64) string
	makeDir(ctx context.Context, path string) error
	removeDir(ctx context.Context, path string) error
	// cloneDir makes the new dst a copy of src: a snapshot on btrfs, a (reflinked) copy elsewhere.
	cloneDir(ctx context.Context, src, dst string, readonly bool, rep *reporter) error
	// setLimit caps what a data directory may hold (btrfs qgroups); 0 removes the cap.
	setLimit(ctx context.Context, path string, size uint64) error
	// usage is the bytes a data directory uses.
	usage(ctx context.Context, path string) (uint64, error)
}

// plainDriver serves dir pools (a local directory) and shared pools (a directory on a shared
// filesystem every host mounts). Custom filesystem volumes are ext4 images on both, so a volume
// moves between containers (loop mount) and VMs (raw disk). Container roots on a dir pool are
// plain directories when no size is asked for and ext4 images when one is, because project quotas
// are missing on most host filesystems and an image is the one cap that works everywhere; on a
// shared pool they are always images, one file per disk (like a ploop image).
type plainDriver struct{ shared bool }

func (d *plainDriver) initPool(ctx context.Context, p *Pool) error {
	if d.shared {
		fi, err := os.Stat(p.Path)
		if err != nil {
			return errdefs.Invalid("shared pool source %s: %v (mount the shared filesystem first)", p.Path, err)
		}
		if !fi.IsDir() {
			return errdefs.Invalid("shared pool source %s is not a directory", p.Path)
		}
		return nil
	}
	return os.MkdirAll(p.Path, 0o711)
}

func (d *plainDriver) mountPool(context.Context, *Pool) error { return nil }

func (d *plainDriver) destroyPool(_ context.Context, p *Pool) error {
	if !d.shared && p.Source == "" { // the default location is tandem's own; keep it if not empty
		if err := os.Remove(p.Path); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
			return err
		}
	}
	return nil
}

func (d *plainDriver) check(p *Pool) error {
	_, err := os.Stat(p.Path)
	return err
}

func (d *plainDriver) fsFormat(typ string, size uint64) string {
	if d.shared || typ == TypeCustom || size > 0 {
		return FormatExt4
	}
	return FormatDir
}

func (d *plainDriver) makeDir(_ context.Context, path string) error { return os.Mkdir(path, 0o711) }

func (d *plainDriver) removeDir(_ context.Context, path string) error { return removeTree(path) }

func (d *plainDriver) cloneDir(ctx context.Context, src, dst string, _ bool, rep *reporter) error {
	if err := os.Mkdir(dst, 0o711); err != nil {
		return err
	}
	return copyTree(ctx, src, dst, rep)
}

func (d *plainDriver) setLimit(context.Context, string, uint64) error {
	return errdefs.Unavailable("this pool driver cannot cap a directory")
}

func (d *plainDriver) usage(_ context.Context, path string) (uint64, error) { return diskUsage(path) }

// removeTree removes a directory tree, making read-only directories writable first (an
// unprivileged copy of a rootfs has them).
func removeTree(path string) error {
	err := os.RemoveAll(path)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// diskUsage sums the blocks allocated under path (each inode once).
func diskUsage(path string) (uint64, error) {
	var total uint64
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if key := [2]uint64{st.Dev, st.Ino}; !seen[key] {
			seen[key] = true
			total += uint64(st.Blocks) * 512
		}
		return nil
	})
	return total, err
}

// statfs reports a filesystem's total, used and available bytes.
func statfs(path string) (total, used, free uint64, err error) {
	var s unix.Statfs_t
	if err := unix.Statfs(path, &s); err != nil {
		return 0, 0, 0, err
	}
	bs := uint64(s.Bsize)
	return s.Blocks * bs, (s.Blocks - s.Bfree) * bs, s.Bavail * bs, nil
}

func freeBytes(path string) uint64 {
	_, _, free, err := statfs(path)
	if err != nil {
		return 0
	}
	return free
}
