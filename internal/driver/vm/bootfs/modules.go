package bootfs

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// GuestModules are the modules a guest needs before its root disk is mounted, in the order that
// matters (virtio_ring before virtio, crc32c before ext4, which only names it as a soft dependency),
// plus what the image's init needs from the start: the virtio console for the agent, the network,
// the RNG, the balloon, and button+evdev so that an ACPI power button press reaches user space.
var GuestModules = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_mmio",
	"virtio_blk", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4",
	"virtio_console", "failover", "net_failover", "virtio_net", "virtio_rng", "virtio_balloon",
	"button", "evdev",
}

// Module is a kernel module file to put in the initramfs.
type Module struct {
	Name string // canonical name (underscores)
	Path string // absolute path in the modules tree
}

func canonical(name string) string { return strings.ReplaceAll(name, "-", "_") }

func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return canonical(base)
}

// ResolveModules reads modDir/modules.dep and returns the modules for names and everything they
// depend on, each dependency before its user. Names that are built into the kernel (or absent) are
// returned in skipped: the kernel has them or the guest does without.
func ResolveModules(modDir string, names []string) (mods []Module, skipped []string, err error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	paths := map[string]string{}
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := moduleName(mod)
		paths[n] = filepath.Join(modDir, mod)
		for _, d := range strings.Fields(rest) {
			deps[n] = append(deps[n], moduleName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{}
	var visit func(n string, depth int) error
	visit = func(n string, depth int) error {
		if seen[n] {
			return nil
		}
		if depth > 32 {
			return fmt.Errorf("module dependency loop at %s", n)
		}
		seen[n] = true
		// modules.dep lists a module's dependencies users first, as modprobe unloads them: load in reverse.
		d := deps[n]
		for i := len(d) - 1; i >= 0; i-- {
			if err := visit(d[i], depth+1); err != nil {
				return err
			}
		}
		mods = append(mods, Module{Name: n, Path: paths[n]})
		return nil
	}
	for _, n := range names {
		n = canonical(n)
		if _, ok := paths[n]; !ok {
			skipped = append(skipped, n)
			continue
		}
		if err := visit(n, 0); err != nil {
			return nil, nil, err
		}
	}
	return mods, skipped, nil
}

// readModule returns a module's ELF bytes: busybox insmod loads only uncompressed modules, and newer
// Debian kernels ship them compressed with xz or zstd.
func readModule(ctx context.Context, path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".ko.zst"):
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		dec, err := zstd.NewReader(nil)
		if err != nil {
			return nil, err
		}
		defer dec.Close()
		return dec.DecodeAll(raw, nil)
	case strings.HasSuffix(path, ".ko.xz"):
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(ctx, "xz", "-dc", path)
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("xz -dc %s: %v: %s", path, err, bytes.TrimSpace(errb.Bytes()))
		}
		return out.Bytes(), nil
	}
	return nil, fmt.Errorf("module %s: unknown compression", path)
}
