package container

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

var _ driver.DiskHotplugger = (*Driver)(nil)

// AddDisk mounts a host directory (a mounted volume) at disk.Path inside the running container.
// The mount is cloned here with open_tree, idmapped to the container's user namespace so that ids
// on the volume are the container's own (root inside owns what uid 0 owns on the volume, as a VM
// would see it), then moved into the container's mount namespace.
func (d *Driver) AddDisk(ctx context.Context, h *driver.Handle, name string, disk driver.Disk) error {
	if !filepath.IsAbs(disk.Path) {
		return errdefs.Invalid("disk %s: a container needs an absolute mount path", name)
	}
	pid, st, err := d.runningInit(ctx, h)
	if err != nil {
		return err
	}
	tree, err := unix.OpenTree(unix.AT_FDCWD, disk.Source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("disk %s: clone mount of %s: %w", name, disk.Source, err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{}
	if disk.ReadOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if !st.IDs.Identity() {
		userns, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", pid))
		if err != nil {
			return err
		}
		defer userns.Close()
		attr.Attr_set |= unix.MOUNT_ATTR_IDMAP
		attr.Userns_fd = uint64(userns.Fd())
	}
	if attr.Attr_set != 0 {
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			return fmt.Errorf("disk %s: set mount attributes: %w", name, err)
		}
	}
	return inMountNamespace(pid, func() error {
		if err := os.MkdirAll(disk.Path, 0o755); err != nil {
			return err
		}
		return unix.MoveMount(tree, "", unix.AT_FDCWD, disk.Path, unix.MOVE_MOUNT_F_EMPTY_PATH)
	})
}

// RemoveDisk unmounts the volume inside the container (lazily: a process with a file open there
// keeps it until it lets go, but the path is gone at once).
func (d *Driver) RemoveDisk(ctx context.Context, h *driver.Handle, name string, disk driver.Disk) error {
	pid, _, err := d.runningInit(ctx, h)
	if err != nil {
		return err
	}
	return inMountNamespace(pid, func() error {
		if err := unix.Unmount(disk.Path, unix.MNT_DETACH); err != nil && err != unix.EINVAL {
			return fmt.Errorf("disk %s: unmount %s: %w", name, disk.Path, err)
		}
		return nil
	})
}

// runningInit returns the init pid and state of a running container.
func (d *Driver) runningInit(ctx context.Context, h *driver.Handle) (int, *instState, error) {
	if err := checkID(h.ID); err != nil {
		return 0, nil, err
	}
	status, pid := d.observe(h.ID)
	if status != driver.StatusRunning {
		return 0, nil, driver.ErrNotRunning
	}
	st, err := d.load(h.ID)
	if err != nil {
		return 0, nil, err
	}
	return pid, st, nil
}

// inMountNamespace runs fn on a thread that has joined pid's mount namespace (and so its root). The
// thread first stops sharing filesystem attributes with the others, which setns requires, and is
// never given back to the Go scheduler: it dies with the goroutine.
func inMountNamespace(pid int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- fmt.Errorf("unshare fs: %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("join the container's mount namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
