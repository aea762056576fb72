package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/units"
)

// btrfsDriver keeps each volume's data in a subvolume: snapshots and clones are instant and share
// blocks, and container roots are capped by a qgroup limit on their subvolume (quotas are enabled
// on the pool). Custom filesystem volumes are ext4 images inside a subvolume, like on other pools,
// so they can be handed to a VM as a disk.
type btrfsDriver struct{}

const (
	btrfsMagic      = 0x9123683E
	btrfsFirstInode = 256 // the root directory of every subvolume has this inode number
	minBtrfsSize    = uint64(64) << 20
	mixedBelow      = uint64(1) << 30 // mkfs.btrfs advises mixed block groups below 1 GiB
)

func isBtrfs(path string) bool {
	var s unix.Statfs_t
	return unix.Statfs(path, &s) == nil && uint32(s.Type) == btrfsMagic
}

func isSubvolume(path string) bool {
	var st unix.Stat_t
	return isBtrfs(path) && unix.Lstat(path, &st) == nil && st.Ino == btrfsFirstInode &&
		st.Mode&unix.S_IFMT == unix.S_IFDIR
}

func (d *btrfsDriver) initPool(ctx context.Context, p *Pool) error {
	if !isRoot() {
		return errdefs.Unavailable("a btrfs pool needs root (mounts, quotas)")
	}
	if p.LoopFile == "" {
		if !isBtrfs(p.Path) {
			return errdefs.Invalid("%s is not on a btrfs filesystem", p.Path)
		}
		return enableQuota(ctx, p.Path)
	}
	if p.Size < minBtrfsSize {
		return errdefs.Invalid("a btrfs pool needs at least %s; %s asked", units.FormatSize(minBtrfsSize), units.FormatSize(p.Size))
	}
	if err := os.MkdirAll(filepath.Dir(p.LoopFile), 0o700); err != nil {
		return err
	}
	if free := freeBytes(filepath.Dir(p.LoopFile)); p.Size > free {
		return errdefs.Invalid("the loop file for pool %q (%s) does not fit on the host (%s free)", p.Name,
			units.FormatSize(p.Size), units.FormatSize(free))
	}
	f, err := os.OpenFile(p.LoopFile, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(p.Size))
	f.Close()
	if err == nil {
		err = d.formatAndMount(ctx, p)
	}
	if err != nil {
		cctx, cancel := bg(ctx)
		defer cancel()
		if cerr := d.destroyPool(cctx, p); cerr != nil {
			return fmt.Errorf("%w (clean-up: %v)", err, cerr)
		}
	}
	return err
}

func (d *btrfsDriver) formatAndMount(ctx context.Context, p *Pool) error {
	args := []string{"-q", "-f", "-L", "tandem-" + p.Name}
	if p.Size < mixedBelow {
		args = append(args, "--mixed")
	}
	if _, err := run(ctx, "mkfs.btrfs", append(args, p.LoopFile)...); err != nil {
		return err
	}
	if err := d.mountPool(ctx, p); err != nil {
		return err
	}
	return enableQuota(ctx, p.Path)
}

func enableQuota(ctx context.Context, path string) error {
	_, err := run(ctx, "btrfs", "quota", "enable", path)
	return err
}

func (d *btrfsDriver) mountPool(ctx context.Context, p *Pool) error {
	if p.LoopFile == "" || mountedAt(p.Path) {
		return nil
	}
	if err := os.MkdirAll(p.Path, 0o711); err != nil {
		return err
	}
	_, err := run(ctx, "mount", "-o", "loop", p.LoopFile, p.Path)
	return err
}

func (d *btrfsDriver) destroyPool(ctx context.Context, p *Pool) error {
	if p.LoopFile == "" {
		return nil
	}
	if mountedAt(p.Path) {
		if _, err := run(ctx, "umount", p.Path); err != nil {
			return err
		}
	}
	if err := removeIfExists(p.LoopFile); err != nil {
		return err
	}
	return removeIfExists(p.Path)
}

func (d *btrfsDriver) check(p *Pool) error {
	if p.LoopFile != "" && !mountedAt(p.Path) {
		return fmt.Errorf("its loop file is not mounted at %s (Recover mounts it)", p.Path)
	}
	if !isBtrfs(p.Path) {
		return fmt.Errorf("%s is not a btrfs filesystem", p.Path)
	}
	return nil
}

func (d *btrfsDriver) fsFormat(typ string, _ uint64) string {
	if typ == TypeCustom {
		return FormatExt4
	}
	return FormatSubvol
}

func (d *btrfsDriver) makeDir(ctx context.Context, path string) error {
	_, err := run(ctx, "btrfs", "subvolume", "create", path)
	return err
}

func (d *btrfsDriver) removeDir(ctx context.Context, path string) error {
	if !isSubvolume(path) {
		return removeTree(path)
	}
	id, _ := subvolID(ctx, path)
	if _, err := run(ctx, "btrfs", "subvolume", "delete", path); err != nil {
		return err
	}
	if id != "" { // a deleted subvolume's qgroup lingers on older kernels; best effort
		run(ctx, "btrfs", "qgroup", "destroy", "0/"+id, filepath.Dir(path))
	}
	return nil
}

func subvolID(ctx context.Context, path string) (string, error) {
	out, err := run(ctx, "btrfs", "inspect-internal", "rootid", path)
	return strings.TrimSpace(out), err
}

func (d *btrfsDriver) cloneDir(ctx context.Context, src, dst string, readonly bool, rep *reporter) error {
	if !isSubvolume(src) {
		if err := d.makeDir(ctx, dst); err != nil {
			return err
		}
		return copyTree(ctx, src, dst, rep)
	}
	args := []string{"subvolume", "snapshot"}
	if readonly {
		args = append(args, "-r")
	}
	_, err := run(ctx, "btrfs", append(args, src, dst)...)
	rep.finish()
	return err
}

func (d *btrfsDriver) setLimit(ctx context.Context, path string, size uint64) error {
	limit := "none"
	if size > 0 {
		limit = strconv.FormatUint(size, 10)
	}
	_, err := run(ctx, "btrfs", "qgroup", "limit", limit, path)
	return err
}

// usage is the subvolume's referenced bytes from its qgroup.
func (d *btrfsDriver) usage(ctx context.Context, path string) (uint64, error) {
	id, err := subvolID(ctx, path)
	if err != nil {
		return 0, err
	}
	out, err := run(ctx, "btrfs", "qgroup", "show", "--sync", "--raw", "-r", path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "0/"+id {
			return strconv.ParseUint(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("no qgroup 0/%s in btrfs qgroup show", id)
}
