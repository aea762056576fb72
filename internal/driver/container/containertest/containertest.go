// Package containertest builds what container driver tests need: a minimal busybox root filesystem
// and a driver.Images that serves it.
package containertest

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"tandem/internal/driver"
)

// Busybox is the static busybox the rootfs is made from (Debian's busybox-static).
const Busybox = "/bin/busybox"

// Inittab makes busybox init print a line the tests can wait for, keep a shell on the console,
// and say goodbye on shutdown.
const Inittab = `::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::shutdown:/bin/echo tandem-busybox: shutting down
`

// RcS is run once at boot.
const RcS = `#!/bin/sh
mount -t tmpfs -o mode=1777 tmpfs /tmp 2>/dev/null
echo "tandem-busybox: booted as $(hostname)"
`

// BuildBusybox writes a minimal busybox system into dir (created if missing): /bin/busybox, a
// symlink per applet in /bin, /sbin/init, /etc/inittab, /etc/init.d/rcS, passwd and group.
func BuildBusybox(dir string) error {
	for _, d := range []string{"bin", "sbin", "etc/init.d", "proc", "sys", "dev", "tmp", "root", "run", "var/log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
	if err := copyFile(Busybox, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(Busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		os.Symlink("busybox", filepath.Join(dir, "bin", applet))
	}
	if err := os.Symlink("../bin/busybox", filepath.Join(dir, "sbin", "init")); err != nil && !os.IsExist(err) {
		return err
	}
	files := map[string]string{
		"etc/inittab":    Inittab,
		"etc/init.d/rcS": RcS,
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":      "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
		"etc/hostname":   "busybox\n",
		"etc/os-release": "NAME=busybox\nID=busybox\n",
	}
	for name, content := range files {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(name, "etc/init.d/") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Images serves one rootfs for every image name (a stand-in for the image store).
type Images struct {
	Dir  string
	Info driver.ImageInfo
}

// Rootfs implements driver.Images.
func (i *Images) Rootfs(ctx context.Context, image string) (string, driver.ImageInfo, error) {
	if _, err := os.Stat(i.Dir); err != nil {
		return "", driver.ImageInfo{}, err
	}
	info := i.Info
	if info.Fingerprint == "" {
		info.Fingerprint = "test-" + image
	}
	return i.Dir, info, nil
}

// BusyboxImages builds a busybox rootfs under dir and returns Images serving it with busybox
// init's poweroff signal.
func BusyboxImages(dir string) (*Images, error) {
	root := filepath.Join(dir, "busybox-rootfs")
	if err := BuildBusybox(root); err != nil {
		return nil, err
	}
	return &Images{Dir: root, Info: driver.ImageInfo{OS: "busybox", ShutdownSignal: "SIGUSR2"}}, nil
}
