package container

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"tandem/internal/driver"
	"tandem/internal/driver/container/rootfs"
	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// Roots on storage pools (Spec.Root) are used in place: <bundle>/rootfs is a symlink to a dir or
// btrfs tree, or the mount point of an ext4 image, mounted from Start until the container stops.
// The pool keeps container trees in 0700 dirs so that host users cannot reach them, and so the
// container's root (an unmapped uid on the host, which runc's init is when it mounts the rootfs)
// cannot either: runc gets the tree through a bind mount at <bundle>/rootfs.bind, from Start until
// the container stops, and the bundle is traversable by the container's root alone (lockBundle).
// The files are owned by the container's host id range, as in a copied rootfs: shifted in place
// at Create, and again at Start if they carry another range (another host of a shared pool shifted
// them to its own).

func checkRoot(r *driver.RootDisk) error {
	switch r.Format {
	case driver.RootDir, driver.RootBtrfs, driver.RootExt4:
	default:
		return errdefs.Invalid("container: a root disk of format %q cannot hold a container (dir, btrfs or ext4)", r.Format)
	}
	if !filepath.IsAbs(r.Path) {
		return errdefs.Invalid("container: root disk path %q is not absolute", r.Path)
	}
	if _, err := os.Stat(r.Path); err != nil {
		return errdefs.Invalid("container: root disk: %v", err)
	}
	return nil
}

// placeRoot makes <bundle>/rootfs lead to the root: a symlink to a tree (replaced when the pool's
// path changed), an empty mount point for an image.
func placeRoot(p paths, r *driver.RootDisk) error {
	if r.Format == driver.RootExt4 {
		if err := os.Mkdir(p.rootfs, 0o711); err != nil && !os.IsExist(err) {
			return err
		}
		return nil
	}
	if cur, err := os.Readlink(p.rootfs); err == nil && cur == r.Path {
		return nil
	}
	tmp := p.rootfs + ".new"
	os.Remove(tmp)
	if err := os.Symlink(r.Path, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, p.rootfs)
}

// readyRoot makes the root usable at <bundle>/rootfs for st's id range: placed, mounted, owned
// (fresh: a root new to this driver).
func (d *Driver) readyRoot(ctx context.Context, h *driver.Handle, st *instState, fresh bool) error {
	r, p := h.Spec.Root, d.paths(h.ID)
	if err := checkRoot(r); err != nil {
		return err
	}
	if err := placeRoot(p, r); err != nil {
		return err
	}
	if r.Format == driver.RootExt4 && !fsutil.MountedAt(p.rootfs) {
		if err := fsutil.LoopMount(ctx, r.Path, p.rootfs, false); err != nil {
			return fmt.Errorf("container %s: root disk: %w", h.ID, err)
		}
	}
	if r.Format != driver.RootExt4 && !fsutil.MountedAt(bindPath(p)) {
		if err := os.Mkdir(bindPath(p), 0o700); err != nil && !os.IsExist(err) {
			return err
		}
		if err := unix.Mount(r.Path, bindPath(p), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("container %s: bind mount the root disk: %w", h.ID, err)
		}
	}
	return d.ownRoot(ctx, p, st, fresh)
}

// bindPath is where a tree root is bind-mounted for runc while the container runs.
func bindPath(p paths) string { return filepath.Join(p.bundle, "rootfs.bind") }

// runcRoot is the rootfs path runc is given: the bind mount of a tree root (runc refuses a
// symlink, and the tree's own path is not reachable by the container's root), else the rootfs.
func runcRoot(p paths) string {
	if fsutil.MountedAt(bindPath(p)) {
		return bindPath(p)
	}
	if real, err := filepath.EvalSymlinks(p.rootfs); err == nil {
		return real
	}
	return p.rootfs
}

// lockBundle makes the bundle traversable by the container's root alone (hostRoot on the host,
// 0 for a privileged container): mode 0110, owner hostRoot, group root. The group's search bit is
// for CRIU's restored task, which reads its images in the bundle as uid 0 of a user namespace
// that has no id map yet (see prepareImages). Called at create, adopt and every start: the
// container's id range can change (its root shifted to another range).
func lockBundle(p paths, hostRoot int) error {
	if err := os.Chown(p.bundle, hostRoot, 0); err != nil {
		return err
	}
	return os.Chmod(p.bundle, 0o110)
}

// ownRoot shifts the tree at <bundle>/rootfs into st's id range from the range its root directory
// shows (uid 0: none); always, dropping device nodes too, for a root new to this driver.
func (d *Driver) ownRoot(ctx context.Context, p paths, st *instState, fresh bool) error {
	dir, err := filepath.EvalSymlinks(p.rootfs)
	if err != nil {
		return err
	}
	var s unix.Stat_t
	if err := unix.Lstat(dir, &s); err != nil {
		return err
	}
	from := rootfs.IDMap{}
	if s.Uid != 0 {
		from = rootfs.IDMap{Base: s.Uid, Size: d.opts.IDSize}
	}
	if !fresh && from == st.IDs {
		return nil
	}
	return rootfs.Adopt(ctx, dir, from, st.IDs)
}

// RootTree gives the tree of a stopped container's root, to copy from or into (a cold move, a
// copy); call release when done (it unmounts an image root).
func (d *Driver) RootTree(ctx context.Context, h *driver.Handle) (dir string, release func() error, err error) {
	if err := checkID(h.ID); err != nil {
		return "", nil, err
	}
	if st, err := d.State(ctx, h); err != nil || st != driver.StatusStopped {
		return "", nil, errdefs.Conflict("container %s is %v (%v): stop it before copying its root", h.ID, st, err)
	}
	return d.mountedRoot(ctx, h)
}

// mountedRoot gives the tree of a stopped container at its rootfs path, mounting an image root
// until the returned func is called.
func (d *Driver) mountedRoot(ctx context.Context, h *driver.Handle) (string, func() error, error) {
	p, r := d.paths(h.ID), h.Spec.Root
	none := func() error { return nil }
	if r == nil || r.Format != driver.RootExt4 || fsutil.MountedAt(p.rootfs) {
		dir, err := filepath.EvalSymlinks(p.rootfs)
		return dir, none, err
	}
	if err := placeRoot(p, r); err != nil {
		return "", nil, err
	}
	if err := fsutil.LoopMount(ctx, r.Path, p.rootfs, false); err != nil {
		return "", nil, err
	}
	return p.rootfs, func() error { return releaseRoot(p) }, nil
}

// releaseRoot unmounts a tree root's bind mount and an image root (a tree's symlink stays).
// Nothing of the container may be left using it: another host may take the disk next.
func releaseRoot(p paths) error {
	if err := fsutil.Unmount(bindPath(p)); err != nil {
		return err
	}
	if err := os.Remove(bindPath(p)); err != nil && !os.IsNotExist(err) {
		return err
	}
	if fi, err := os.Lstat(p.rootfs); err != nil || !fi.IsDir() {
		return nil
	}
	return fsutil.Unmount(p.rootfs)
}

// SyncRoot implements driver.RootSyncer: the filesystem under the container's root is flushed
// (an ext4 image's own cache lives above the image file a snapshot copies).
func (d *Driver) SyncRoot(ctx context.Context, h *driver.Handle) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	f, err := os.Open(d.paths(h.ID).rootfs)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// RootSource implements driver.RootSourcer: a root is made from the image's rootfs tree.
func (d *Driver) RootSource(ctx context.Context, image string) (driver.RootSource, error) {
	dir, info, err := d.opts.Images.Rootfs(ctx, image)
	if err != nil {
		return driver.RootSource{}, fmt.Errorf("image %s: %w", image, err)
	}
	fp := info.Fingerprint
	if fp == "" {
		fp = image
	}
	return driver.RootSource{Fingerprint: fp, Dir: dir}, nil
}
