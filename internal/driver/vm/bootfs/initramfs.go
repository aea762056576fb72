// Package bootfs makes what a rootfs image needs to boot as a VM: an initramfs holding a static
// busybox, the guest kernel's virtio and ext4 modules, the guest agent and an init that mounts the
// root disk and switches to the image's init.
package bootfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"tandem/internal/fsutil"
)

//go:embed init.sh
var initScript []byte

// agentUnit starts the agent on systemd images.
const agentUnit = `[Unit]
Description=tandem guest agent
After=local-fs.target

[Service]
ExecStart=/usr/local/lib/tandem/tandem-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
`

// defaultInittab is busybox init's built-in table, written when an image has no /etc/inittab so that
// adding the agent's line does not drop the rest.
const defaultInittab = `::sysinit:/etc/init.d/rcS
::askfirst:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
::restart:/sbin/init
`

// Initramfs says what goes into an initramfs.
type Initramfs struct {
	Busybox    string   // a statically linked busybox
	ModulesDir string   // the guest kernel's /lib/modules/VERSION
	Modules    []string // module names; dependencies are added (default GuestModules)
	Agent      string   // the guest agent binary; "" for none
}

// Write writes the initramfs as an uncompressed newc cpio: under TCG decompressing costs more boot
// time than loading a few more megabytes.
func (s Initramfs) Write(ctx context.Context, w io.Writer) error {
	bb, err := os.ReadFile(s.Busybox)
	if err != nil {
		return err
	}
	if err := CheckStatic(s.Busybox); err != nil {
		return err
	}
	names := s.Modules
	if names == nil {
		names = GuestModules
	}
	mods, _, err := ResolveModules(s.ModulesDir, names)
	if err != nil {
		return fmt.Errorf("guest kernel modules: %w", err)
	}
	c := NewCPIO(w)
	for _, d := range []string{"bin", "dev", "etc", "etc/tandem", "lib", "lib/modules", "newroot", "proc", "sys", "tandem"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 5, 1) // the kernel opens it for init's stdio before devtmpfs is mounted
	c.CharDev("dev/null", 1, 3)
	c.File("bin/busybox", 0o755, bb)
	c.File("init", 0o755, initScript)
	var order bytes.Buffer
	for _, m := range mods {
		data, err := readModule(ctx, m.Path)
		if err != nil {
			return err
		}
		c.File("lib/modules/"+m.Name+".ko", 0o644, data)
		fmt.Fprintln(&order, m.Name)
	}
	c.File("etc/tandem/modules", 0o644, order.Bytes())
	if s.Agent != "" {
		agent, err := os.ReadFile(s.Agent)
		if err != nil {
			return fmt.Errorf("guest agent: %w", err)
		}
		c.File("tandem/tandem-agent", 0o755, agent)
		c.File("tandem/tandem-agent.service", 0o644, []byte(agentUnit))
		c.File("tandem/inittab.default", 0o644, []byte(defaultInittab))
	}
	return c.Close()
}

// CheckStatic refuses a dynamically linked busybox: the initramfs has no libc.
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the initramfs needs a static busybox (busybox-static)", path)
		}
	}
	return nil
}

// key hashes every input, so a new agent, busybox or kernel makes a new initramfs.
func (s Initramfs) key() (string, error) {
	h := sha256.New()
	h.Write(initScript)
	fmt.Fprintf(h, "%q %q\n", s.ModulesDir, s.Modules)
	for _, p := range []string{s.Busybox, s.Agent, filepath.Join(s.ModulesDir, "modules.dep")} {
		if p == "" {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

var buildMu sync.Mutex

// Build returns the path of the initramfs for s in dir, writing it (atomically) when no identical
// one is there yet.
func (s Initramfs) Build(ctx context.Context, dir string) (string, error) {
	key, err := s.key()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "initramfs-"+key+".cpio")
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := s.Write(ctx, &buf); err != nil {
		return "", err
	}
	if err := fsutil.WriteFileAtomic(path, buf.Bytes(), 0o644); err != nil {
		return "", err
	}
	// QEMU reads -initrd once at start-up, so older builds are unused from here on.
	old, _ := filepath.Glob(filepath.Join(dir, "initramfs-*.cpio"))
	for _, o := range old {
		if o != path {
			os.Remove(o)
		}
	}
	return path, nil
}
