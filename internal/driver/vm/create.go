package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/image"
	"tandem/internal/progress"
)

// Create makes the instance's disk (a qcow2 overlay over the image's shared base disk), its UEFI
// variable store and TPM state where the profile needs them, and records the hardware choices.
func (d *Driver) Create(ctx context.Context, spec *driver.Spec) (*driver.Handle, error) {
	if err := checkID(spec.ID); err != nil {
		return nil, err
	}
	defer d.lock(spec.ID)()
	p := d.paths(spec.ID)
	if _, err := os.Stat(p.config); err == nil {
		return nil, errdefs.Exists("vm: instance %s exists", spec.ID)
	}
	progress.Report(ctx, 0, "preparing image")
	rootfs, info, err := d.imageSource(ctx, spec.Image)
	if err != nil {
		return nil, err
	}
	cfg, err := decideHardware(spec, info)
	if err != nil {
		return nil, err
	}
	if _, _, err := sizing(spec, cfg.Windows); err != nil {
		return nil, err
	}
	if dir := spec.Config[KeyDiskDir]; dir != "" && !filepath.IsAbs(dir) {
		return nil, errdefs.Invalid("%s %q: want an absolute path", KeyDiskDir, dir)
	}
	var reverts []func()
	done := false
	defer func() {
		if !done {
			for i := len(reverts) - 1; i >= 0; i-- {
				reverts[i]()
			}
		}
	}()
	os.RemoveAll(p.dir) // what an interrupted Create left
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, err
	}
	reverts = append(reverts, func() { os.RemoveAll(p.dir) })

	if err := d.makeDisk(ctx, spec, &cfg, p, rootfs, info, &reverts); err != nil {
		return nil, err
	}
	progress.Report(ctx, 80, "preparing firmware")
	if cfg.Firmware == "uefi" {
		if err := copyFile(d.ovmf(cfg.Windows).vars, p.vars); err != nil {
			return nil, errdefs.Unavailable("vm: UEFI variable store: %v (install ovmf)", err)
		}
	}
	if cfg.Windows {
		if err := os.MkdirAll(p.tpmState, 0o700); err != nil {
			return nil, err
		}
	}
	if err := writeJSON(p.config, cfg); err != nil {
		return nil, err
	}
	done = true
	progress.Report(ctx, 100, "created")
	h := &driver.Handle{ID: spec.ID, Driver: "vm", Version: 1, Spec: *spec}
	setState(h, handleState{})
	return h, nil
}

// makeDisk gives the instance its root disk: the root disk on a pool the spec names, used in
// place; else a qcow2 overlay over the image's base disk (in vm.disk_dir: a whole copy).
func (d *Driver) makeDisk(ctx context.Context, spec *driver.Spec, cfg *instanceConfig, p paths, rootfs string, info driver.ImageInfo, reverts *[]func()) error {
	if r := spec.Root; r != nil {
		if r.Format != driver.RootQcow2 && r.Format != driver.RootRaw {
			return errdefs.Invalid("vm: a root disk of format %q is not a VM disk (qcow2 or raw)", r.Format)
		}
		if fi, err := os.Stat(r.Path); err != nil || !fi.Mode().IsRegular() || !filepath.IsAbs(r.Path) {
			return errdefs.Invalid("vm: root disk %q: not an absolute path to a disk file (%v)", r.Path, err)
		}
		cfg.Disk, cfg.DiskFormat, cfg.PoolDisk = r.Path, r.Format, true
		return nil
	}
	progress.Report(ctx, 10, "building root disk")
	unlockBase, base, err := d.baseDisk(ctx, spec.Image, rootfs, info)
	if err != nil {
		return err
	}
	if dir := spec.Config[KeyDiskDir]; dir != "" {
		// Base disks are host-local and not byte-identical between hosts (mkfs.ext4 picks UUIDs and
		// times), so a disk another host may open carries its whole content, not a backing file.
		cfg.Disk = filepath.Join(dir, spec.ID+".qcow2")
		os.Remove(cfg.Disk) // what an interrupted Create left
		err = qemuImg(ctx, "convert", "-q", "-f", baseFormat(info), "-O", "qcow2", base, cfg.Disk)
		*reverts = append(*reverts, func() { os.Remove(cfg.Disk) })
	} else {
		cfg.Base = base // the overlay records the base's format
		err = qemuImg(ctx, "create", "-q", "-f", "qcow2", "-F", baseFormat(info), "-b", base, p.overlay)
	}
	unlockBase()
	return err
}

// RootSource implements driver.RootSourcer: a VM's root on a pool is an overlay over the pool's
// copy of the image's base disk (built from a rootfs image, or a disk image's own), which is made
// here (and collected once copied) only when the pool has none.
func (d *Driver) RootSource(ctx context.Context, image string) (driver.RootSource, error) {
	rootfs, info, err := d.imageSource(ctx, image)
	if err != nil {
		return driver.RootSource{}, err
	}
	fp := info.Fingerprint
	if fp == "" {
		fp = image
	}
	return driver.RootSource{Fingerprint: fp, Disk: func(ctx context.Context) (string, string, func(), error) {
		unlock, base, err := d.baseDisk(ctx, image, rootfs, info)
		if err != nil {
			return "", "", nil, err
		}
		return base, baseFormat(info), func() { unlock(); d.gcBase(base) }, nil
	}}, nil
}

// Delete removes everything Create and Start made: the QEMU and swtpm processes, taps, the overlay,
// logs, sockets and run dir, and the base disk once no instance uses it.
func (d *Driver) Delete(ctx context.Context, h *driver.Handle) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	defer d.lock(h.ID)()
	return d.remove(ctx, h)
}

// remove is Delete with the instance lock held.
func (d *Driver) remove(ctx context.Context, h *driver.Handle) error {
	p := d.paths(h.ID)
	d.dropAgent(h.ID)
	if pid := d.qemuPID(p); pid > 0 {
		d.forceStop(ctx, p, pid)
	}
	d.afterExit(ctx, h, p)
	var cfg instanceConfig
	readJSON(p.config, &cfg)
	if err := os.RemoveAll(p.run); err != nil {
		return err
	}
	if cfg.ownsDisk() {
		if err := os.Remove(cfg.Disk); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	if err := os.RemoveAll(p.dir); err != nil {
		return err
	}
	if cfg.Base != "" {
		d.gcBase(cfg.Base)
	}
	setState(h, handleState{})
	return nil
}

var baseLocks sync.Map // base disk path -> *sync.Mutex

func lockBase(path string) func() {
	l, _ := baseLocks.LoadOrStore(path, &sync.Mutex{})
	l.(*sync.Mutex).Lock()
	return l.(*sync.Mutex).Unlock
}

// baseDisk returns the image's base disk: a disk image's own disk, or an ext4 disk built from a
// rootfs; either is made once. It returns with the base locked, so a concurrent Delete cannot
// collect it before the overlay is made; the caller unlocks.
func (d *Driver) baseDisk(ctx context.Context, img, rootfs string, info driver.ImageInfo) (func(), string, error) {
	key := info.Fingerprint
	if key == "" {
		key = img + "\x00" + rootfs
	}
	sum := sha256.Sum256([]byte(key))
	path := filepath.Join(d.opts.Dir, "bases", hex.EncodeToString(sum[:])[:24]+"."+baseFormat(info))
	unlock := lockBase(path)
	if _, err := os.Stat(path); err == nil {
		return unlock, path, nil
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		unlock()
		return nil, "", errdefs.Unavailable("vm: qemu-img is not installed")
	}
	if info.DiskFormat != "" {
		if err := d.extractDisk(ctx, img, path, info); err != nil {
			unlock()
			return nil, "", err
		}
		return unlock, path, nil
	}
	disk, err := image.BuildRootDisk(ctx, rootfs, path, 0)
	if err != nil {
		unlock()
		return nil, "", fmt.Errorf("vm: building the root disk: %w", err)
	}
	if disk.Path != path {
		unlock()
		return nil, "", fmt.Errorf("vm: root disk came out as %s", disk.Path)
	}
	return unlock, path, nil
}

// gcBase removes a base disk no instance's overlay refers to any more. An instance dir without a
// readable instance.json may be a Create in progress whose overlay already points at the base: its
// presence keeps every base.
func (d *Driver) gcBase(base string) {
	defer lockBase(base)()
	dirs, err := os.ReadDir(filepath.Join(d.opts.Dir, "instances"))
	if err != nil {
		return
	}
	for _, e := range dirs {
		var cfg instanceConfig
		if readJSON(filepath.Join(d.opts.Dir, "instances", e.Name(), "instance.json"), &cfg) != nil || cfg.Base == base {
			return
		}
	}
	os.Remove(base)
}

func qemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("vm: qemu-img %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// ovmfFiles are the firmware images of a UEFI profile: Windows gets the Microsoft-keyed secure boot
// build, Linux the plain one.
type ovmfFiles struct{ code, vars string }

func (d *Driver) ovmf(windows bool) ovmfFiles {
	if windows {
		return ovmfFiles{filepath.Join(d.opts.OVMFDir, "OVMF_CODE_4M.ms.fd"), filepath.Join(d.opts.OVMFDir, "OVMF_VARS_4M.ms.fd")}
	}
	return ovmfFiles{filepath.Join(d.opts.OVMFDir, "OVMF_CODE_4M.fd"), filepath.Join(d.opts.OVMFDir, "OVMF_VARS_4M.fd")}
}

// handleState is the driver's part of the persisted handle.
type handleState struct {
	PID int `json:"pid,omitempty"`
	// Source is what PrepareOutgoing recorded for a migration destination; it travels in the handle.
	Source *sourceState `json:"source,omitempty"`
}

func getState(h *driver.Handle) handleState {
	var s handleState
	if len(h.DriverState) > 0 {
		json.Unmarshal(h.DriverState, &s)
	}
	return s
}

func setState(h *driver.Handle, s handleState) {
	h.DriverState, _ = json.Marshal(s)
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, data, 0o600)
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func loadConfig(p paths) (instanceConfig, error) {
	var cfg instanceConfig
	err := readJSON(p.config, &cfg)
	if errors.Is(err, os.ErrNotExist) {
		return cfg, errdefs.NotFound("vm: no such instance")
	}
	return cfg, err
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
