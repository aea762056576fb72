package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// GuestDir is where scripts/setup.sh puts the guest kernel (vmlinux, vmlinuz) and lib/modules.
const GuestDir = "/usr/local/share/tandem/guest"

// DefaultInitramfsModules is the load order a rootfs VM needs (DESIGN.md): virtio transports, the
// block and network devices, ext4. Dependencies found in modules.dep are loaded first anyway; a
// trailing "?" marks a module that may be missing (the ACPI power button, which some kernels build in).
var DefaultInitramfsModules = []string{
	"virtio_ring", "virtio", "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net",
	"crc16", "mbcache", "jbd2", "crc32c_generic", "ext4", "button?", "evdev?",
}

// GuestKernel is the kernel a rootfs VM boots.
type GuestKernel struct {
	Vmlinux    string // uncompressed ELF (PVH boot, fast under TCG); "" if absent
	Vmlinuz    string // bzImage; "" if absent
	Version    string
	ModulesDir string // lib/modules/<Version>
}

// FindGuestKernel looks in dir (GuestDir if empty) for a kernel and its modules.
func FindGuestKernel(dir string) (*GuestKernel, error) {
	if dir == "" {
		dir = GuestDir
	}
	k := &GuestKernel{}
	for _, p := range []struct {
		dst  *string
		name string
	}{{&k.Vmlinux, "vmlinux"}, {&k.Vmlinuz, "vmlinuz"}} {
		if _, err := os.Stat(filepath.Join(dir, p.name)); err == nil {
			*p.dst = filepath.Join(dir, p.name)
		}
	}
	if k.Vmlinux == "" && k.Vmlinuz == "" {
		return nil, errdefs.Unavailable("no guest kernel in %s (vmlinux or vmlinuz); run scripts/setup.sh", dir)
	}
	versions, _ := filepath.Glob(filepath.Join(dir, "lib/modules/*/modules.dep"))
	if len(versions) == 0 {
		return nil, errdefs.Unavailable("no guest kernel modules in %s/lib/modules; run scripts/setup.sh", dir)
	}
	k.ModulesDir = filepath.Dir(versions[len(versions)-1])
	k.Version = filepath.Base(k.ModulesDir)
	return k, nil
}

// kmod is one module file and the files it depends on, as modules.dep lists them.
type kmod struct {
	path string
	deps []string
}

// modName normalises a module name or path: "kernel/x/crc32c-generic.ko.xz" -> "crc32c_generic".
func modName(p string) string {
	b := filepath.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// readModuleIndex parses modules.dep and modules.builtin; without modules.dep it falls back to
// finding *.ko files (then dependencies are the caller's order only).
func readModuleIndex(dir string) (map[string]kmod, map[string]bool, error) {
	mods, builtin := map[string]kmod{}, map[string]bool{}
	if data, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(data)) {
			builtin[modName(l)] = true
		}
	}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		werr := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() && strings.Contains(d.Name(), ".ko") {
				rel, _ := filepath.Rel(dir, p)
				mods[modName(p)] = kmod{path: rel}
			}
			return err
		})
		if werr != nil {
			return nil, nil, werr
		}
		return mods, builtin, nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		file, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		mods[modName(file)] = kmod{path: file, deps: strings.Fields(deps)}
	}
	return mods, builtin, sc.Err()
}

// resolveModules orders the requested modules with every dependency before its user.
func resolveModules(dir string, requested []string) ([]kmod, error) {
	mods, builtin, err := readModuleIndex(dir)
	if err != nil {
		return nil, err
	}
	var order []kmod
	done := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if done[name] || builtin[name] {
			return nil
		}
		if len(stack) > 64 {
			return fmt.Errorf("module dependency loop: %s", strings.Join(stack, " -> "))
		}
		m, ok := mods[name]
		if !ok {
			return errdefs.NotFound("kernel module %q not found in %s", name, dir)
		}
		done[name] = true
		for _, d := range m.deps {
			if err := visit(modName(d), append(stack, name)); err != nil {
				return err
			}
		}
		order = append(order, m)
		return nil
	}
	for _, r := range requested {
		name, optional := strings.CutSuffix(r, "?")
		name = modName(name)
		if _, ok := mods[name]; !ok && optional && !builtin[name] {
			slog.Debug("image: optional module absent", "module", name)
			continue
		}
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readModule returns a module's bytes, decompressed: busybox insmod takes plain .ko files.
func readModule(ctx context.Context, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.HasSuffix(path, ".ko"):
		return data, nil
	case strings.HasSuffix(path, ".ko.gz"):
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".ko.zst"):
		zr, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		defer zr.Close()
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".ko.xz"):
		out, err := exec.CommandContext(ctx, "xz", "-dc", path).Output()
		if err != nil {
			return nil, fmt.Errorf("xz -dc %s: %w", path, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown module file type: %s", path)
}

// BuildInitramfs writes a gzip'd newc cpio to out: static busybox, the given kernel modules (with
// their dependencies, loaded in order by /init), and an /init that mounts the root disk (root= on
// the command line, else /dev/vda) and switch_roots into it, or stays in the initramfs under
// busybox init when there is no root disk. kernelModulesDir is lib/modules/<version>.
func BuildInitramfs(ctx context.Context, out, kernelModulesDir string, modules []string) error {
	bb, err := findBusybox("")
	if err != nil {
		return err
	}
	bbData, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	order, err := resolveModules(kernelModulesDir, modules)
	if err != nil {
		return err
	}
	now := time.Now().Unix()
	var entries []cpioEntry
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run",
		"tmp", "newroot", "etc", "root", "lib", "lib/modules"} {
		entries = append(entries, cpioEntry{Name: d, Mode: cpioDir | 0o755})
	}
	entries = append(entries,
		cpioEntry{Name: "dev/console", Mode: cpioChr | 0o600, Major: 5, Minor: 1},
		cpioEntry{Name: "dev/null", Mode: cpioChr | 0o666, Major: 1, Minor: 3},
		cpioEntry{Name: "bin/busybox", Mode: cpioReg | 0o755, Data: bbData},
		cpioEntry{Name: "bin/sh", Mode: cpioLink | 0o777, Data: []byte("busybox")},
		cpioEntry{Name: "init", Mode: cpioReg | 0o755, Data: []byte(initramfsInit)},
		cpioEntry{Name: "etc/inittab", Mode: cpioReg | 0o644, Data: []byte(initramfsInittab)},
	)
	var list strings.Builder
	for _, m := range order {
		p := m.path
		if !filepath.IsAbs(p) {
			p = filepath.Join(kernelModulesDir, p)
		}
		data, err := readModule(ctx, p)
		if err != nil {
			return fmt.Errorf("module %s: %w", modName(p), err)
		}
		entries = append(entries, cpioEntry{Name: "lib/modules/" + modName(p) + ".ko", Mode: cpioReg | 0o644, Data: data})
		list.WriteString(modName(p) + "\n")
	}
	entries = append(entries, cpioEntry{Name: "etc/modules", Mode: cpioReg | 0o644, Data: []byte(list.String())})

	tmp := out + ".partial"
	defer os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	cw := &cpioWriter{w: zw}
	for _, e := range entries {
		e.Mtime = now
		if err := cw.add(e); err != nil {
			return err
		}
	}
	if err := cw.close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return err
	}
	return fsutil.SyncDir(filepath.Dir(out))
}

// initramfsInit is /init. It must never exit (the kernel panics), so every path ends in an exec.
const initramfsInit = `#!/bin/busybox sh
# tandem initramfs: load modules, mount the root disk, switch_root into it.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s
while read -r m; do
	[ -n "$m" ] && { insmod "/lib/modules/$m.ko" || echo "initramfs: cannot load $m"; }
done < /etc/modules

root=/dev/vda; explicit=; rootfstype=ext4; rootflags=rw; init=/sbin/init
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) root="${arg#root=}"; explicit=1 ;;
	rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
	rootflags=*) rootflags="${arg#rootflags=}" ;;
	init=*) init="${arg#init=}" ;;
	tandem.noroot) root= ;;
	esac
done

# An explicit root= may appear late; the default disk either is there at once or not at all.
tries=10; [ -n "$explicit" ] && tries=100
dev=
while [ -n "$root" ] && [ "$tries" -gt 0 ]; do
	case "$root" in
	LABEL=*|UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
	*) dev="$root" ;;
	esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	dev=; tries=$((tries - 1)); sleep 0.1
done

if [ -n "$dev" ] && mount -t "$rootfstype" -o "$rootflags" "$dev" /newroot; then
	if [ -e "/newroot$init" ] || [ -L "/newroot$init" ]; then
		for fs in dev proc sys; do
			mount --move /$fs /newroot/$fs 2>/dev/null || umount -l /$fs
		done
		exec switch_root /newroot "$init"
	fi
	echo "initramfs: $init not found on $dev"
	umount /newroot
elif [ -n "$root" ]; then
	echo "initramfs: root disk $root not found or not mountable"
fi
echo "initramfs: no root disk; staying in the initramfs"
exec /bin/busybox init
`

// initramfsInittab runs a console shell when the VM stays in the initramfs.
const initramfsInittab = `::respawn:/bin/cttyhack /bin/sh -l
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
`
