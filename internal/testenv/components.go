package testenv

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/internal/hostexec"
)

// Kind says who is to blame when a component is absent.
type Kind int

const (
	// Setup: scripts/setup.sh installs it (absent: skip, or fail under CI=true).
	Setup Kind = iota
	// Host: a fact about the host no setup changes (absent: skip everywhere).
	Host
)

// Check returns nil when the component is there, else what is absent.
type Check func(ctx context.Context) error

type component struct {
	kind  Kind
	needs []string // components checked first (checkpoint needs criu)
	check Check
	once  sync.Once
	err   error
}

// GuestKernelDir is vm.DefaultKernelDir, or $TANDEM_GUEST_DIR (testenv cannot import vm: vm's
// tests import testenv).
func GuestKernelDir() string {
	if d := os.Getenv("TANDEM_GUEST_DIR"); d != "" {
		return d
	}
	return "/usr/local/share/tandem/guest"
}

// Absent names components treated as absent whatever the host has (comma-separated), to prove
// what a test does without them: TANDEM_TESTENV_ABSENT=runc CI=true go test ...
const absentEnv = "TANDEM_TESTENV_ABSENT"

var (
	mu         sync.Mutex
	components = map[string]*component{
		"root":         {kind: Host, check: isRoot},
		"runc":         tools("runc"),
		"criu":         {kind: Setup, check: func(context.Context) error { _, err := CRIU(); return err }},
		"qemu":         tools("qemu-system-x86_64"),
		"qemu-img":     tools("qemu-img"),
		"e2fsprogs":    tools("mkfs.ext4", "resize2fs", "e2fsck", "debugfs", "dumpe2fs"),
		"btrfs-progs":  tools("btrfs", "mkfs.btrfs"),
		"losetup":      tools("losetup", "mount"),
		"rsync":        tools("rsync"),
		"socat":        tools("socat"),
		"nft":          tools("nft"),
		"dnsmasq":      tools("dnsmasq"),
		"iproute2":     tools("ip", "tc", "bridge"),
		"nsenter":      tools("nsenter"),
		"debootstrap":  tools("debootstrap"),
		"swtpm":        tools("swtpm"),
		"mtools":       tools("mformat", "mmd", "mcopy"),
		"syslinux":     files(tools("syslinux"), "/usr/lib/syslinux/mbr/mbr.bin"),
		"grub-efi":     files(tools("grub-mkstandalone"), "/usr/lib/grub/x86_64-efi/linux.mod"),
		"ovmf":         files(nil, "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
		"ovmf-ms":      files(nil, "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
		"busybox":      {kind: Setup, check: staticBusybox},
		"guest-kernel": {kind: Setup, check: guestKernel},
		"vm-user":      {kind: Setup, check: userExists("tandem-qemu")}, // daemon.DefaultVMUser
		"user-nobody":  {kind: Host, check: userExists("nobody")},
		"btrfs-module": {kind: Host, check: btrfsModule},
	}
)

// Define adds a component whose check lives in a package testenv cannot import (the checkpoint
// probe is the container driver's, whose own tests import testenv). needs are checked first.
func Define(name string, kind Kind, check Check, needs ...string) {
	mu.Lock()
	defer mu.Unlock()
	components[name] = &component{kind: kind, check: check, needs: needs}
}

// Require stops t unless this host has every named component, checked in order: a Setup one
// absent skips (fails under CI=true), a Host one absent skips. An unknown name fails t: a typo
// must not turn into a skip.
func Require(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		c, err := lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.needs) > 0 {
			Require(t, c.needs...)
		}
		if err := c.result(name); err != nil {
			if c.kind == Host {
				Unsupported(t, "%s: %v", name, err)
			}
			Missing(t, "%s: %v", name, err)
		}
	}
}

func lookup(name string) (*component, error) {
	mu.Lock()
	defer mu.Unlock()
	if c, ok := components[name]; ok {
		return c, nil
	}
	known := make([]string, 0, len(components))
	for n := range components {
		known = append(known, n)
	}
	slices.Sort(known)
	return nil, fmt.Errorf("testenv.Require: unknown component %q (known: %s)", name, strings.Join(known, ", "))
}

// result runs the check once per test process: probes like CRIU's take seconds.
func (c *component) result(name string) error {
	if slices.Contains(strings.Split(os.Getenv(absentEnv), ","), name) {
		return fmt.Errorf("hidden by %s", absentEnv)
	}
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c.err = c.check(ctx)
	})
	return c.err
}

func isRoot(context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root")
	}
	return nil
}

// tools is a Setup component made of executables.
func tools(names ...string) *component {
	return &component{kind: Setup, check: func(context.Context) error {
		for _, n := range names {
			if _, err := hostexec.Look(n); err != nil {
				return err
			}
		}
		return nil
	}}
}

// files is a Setup component made of files, on top of base's tools (nil: none).
func files(base *component, paths ...string) *component {
	return &component{kind: Setup, check: func(ctx context.Context) error {
		if base != nil {
			if err := base.check(ctx); err != nil {
				return err
			}
		}
		for _, p := range paths {
			if _, err := os.Stat(p); err != nil {
				return err
			}
		}
		return nil
	}}
}

// CRIU is the criu the tests run: setup builds it into /usr/local/sbin.
func CRIU() (string, error) { return hostexec.Look("criu") }

// Busybox is the static busybox the image builders and the initramfs pack.
const Busybox = "/bin/busybox"

func staticBusybox(context.Context) error {
	f, err := elf.Open(Busybox)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (busybox-static)", Busybox)
		}
	}
	return nil
}

func guestKernel(context.Context) error {
	for _, f := range []string{"vmlinux", "vmlinuz", "kernel-version"} {
		if _, err := os.Stat(filepath.Join(GuestKernelDir(), f)); err != nil {
			return err
		}
	}
	return nil
}

func userExists(name string) Check {
	return func(context.Context) error {
		_, err := user.Lookup(name)
		return err
	}
}

func btrfsModule(ctx context.Context) error {
	exec.CommandContext(ctx, "modprobe", "btrfs").Run()
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), "btrfs") {
		return errors.New("no btrfs in /proc/filesystems (kernel module)")
	}
	return nil
}
