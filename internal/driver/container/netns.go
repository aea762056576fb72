package container

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"tandem/internal/driver"
	"tandem/internal/network"
)

// The network namespace runc creates for a container is bind-mounted at <run>/netns while the
// container runs: tandem holds it by path (for the network driver to move a veth in, for `ip
// netns`-style tools via nsenter --net=PATH) and removes it when the container stops.

// bindNetns bind-mounts the network namespace of pid at target.
func bindNetns(pid int, target string) error {
	if err := unmountNetns(target); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	src := fmt.Sprintf("/proc/%d/ns/net", pid)
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		os.Remove(target)
		return fmt.Errorf("bind-mount network namespace %s: %w", src, err)
	}
	return nil
}

// unmountNetns undoes bindNetns; it is a no-op when nothing is there.
func unmountNetns(target string) error {
	for i := 0; i < 8; i++ { // stacked mounts, if a crash left more than one
		err := unix.Unmount(target, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			break
		}
		if err != nil {
			return fmt.Errorf("unmount network namespace %s: %w", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// unmountUnder detaches every mount at or below the given directories, deepest first.
func unmountUnder(dirs ...string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var targets []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for _, dir := range dirs {
			if f[4] == dir || strings.HasPrefix(f[4], dir+"/") {
				targets = append(targets, f[4])
			}
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(targets)))
	for _, t := range targets {
		unix.Unmount(t, unix.MNT_DETACH)
	}
}

// isNetns reports whether path is a network namespace bind mount.
func isNetns(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}

// NetnsPath returns the path of a running container's network namespace, or "" when it does not
// run. The networking layer moves a veth in with `ip link set DEV netns PATH`.
func (d *Driver) NetnsPath(h *driver.Handle) string {
	p := d.paths(h.ID).netns
	if isNetns(p) {
		return p
	}
	return ""
}

// loopbackUp brings lo up in the network namespace at path. CRIU 4.1.1 restores a runc container
// into a fresh network namespace without its links' state (see checkpoint.go), so after a restore
// lo is down and loopback traffic inside fails.
func loopbackUp(path string) error {
	return network.InNetns(path, func() error { return setLinkUp("lo") })
}

// setLinkUp sets IFF_UP on a link of the calling thread's network namespace.
func setLinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}
