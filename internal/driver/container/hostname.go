package container

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// writeHostname puts the instance name in the rootfs's /etc/hostname, owned by the container's
// root: images' boot scripts set the hostname from it (busybox rcS: hostname -F /etc/hostname),
// which would otherwise undo the name runc gives the UTS namespace. Every path component is
// opened without following symlinks, so a tree the container has written to cannot redirect the
// write to a host file. An image without /etc is left alone.
func writeHostname(rootfsDir, name string, uid, gid int) error {
	root, err := unix.Open(rootfsDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	etc, err := unix.Openat(root, "etc", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(etc)
	fd, err := unix.Openat(etc, "hostname", unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), "hostname")
	defer f.Close()
	if _, err := f.WriteString(name + "\n"); err != nil {
		return err
	}
	return f.Chown(uid, gid)
}
