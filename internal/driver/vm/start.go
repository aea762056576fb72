package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/bootfs"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
	"tandem/internal/qmp"
)

// Start bounds: QEMU must answer QMP this soon after exec, swtpm must open its socket.
const (
	qmpStartTimeout   = 30 * time.Second
	swtpmStartTimeout = 10 * time.Second
)

// Start launches QEMU paused (-S), waits for its monitor, then lets the vCPUs run. It returns once
// the VM runs; the guest boots on its own (WaitAgent waits for it).
func (d *Driver) Start(ctx context.Context, h *driver.Handle) error {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return err
	}
	defer unlock()
	if d.qemuPID(p) > 0 {
		return errdefs.Conflict("vm: instance is already running")
	}
	if cfg.Incoming != "" {
		return errdefs.Conflict("vm: an incoming migration is unfinished: FinishIncoming or AbortIncoming")
	}
	if cfg.Outgoing != "" {
		return errdefs.Conflict("vm: the instance migrated to another host: Release, or AbortOutgoing if it does not run there")
	}
	d.afterExit(ctx, h, p) // leftovers of a VM that died behind our back
	var adjust func(*qemucmd.Config)
	if cfg.SavedState {
		adjust = func(qc *qemucmd.Config) { qc.Incoming = "defer" }
	}
	pid, c, err := d.launch(ctx, h, cfg, p, adjust)
	if err != nil {
		return err
	}
	defer c.Close()
	if cfg.SavedState {
		if err := d.resumeSaved(ctx, h, p, &cfg, c); err != nil {
			d.kill(pid, p.qmp)
			d.afterExit(context.WithoutCancel(ctx), h, p)
			return err
		}
	}
	progress.Report(ctx, 80, "resuming vcpus")
	if err := c.Cont(ctx); err != nil {
		d.kill(pid, p.qmp)
		d.afterExit(context.WithoutCancel(ctx), h, p)
		return fmt.Errorf("vm: %w", err)
	}
	setState(h, handleState{PID: pid})
	progress.Report(ctx, 100, "running")
	return nil
}

// launch starts QEMU paused for cfg (adjust, if set, changes the command line) and returns its pid
// and monitor. On failure nothing of it is left running.
func (d *Driver) launch(ctx context.Context, h *driver.Handle, cfg instanceConfig, p paths, adjust func(*qemucmd.Config)) (int, *qmp.Client, error) {
	if err := os.MkdirAll(p.run, 0o700); err != nil {
		return 0, nil, err
	}
	var reverts []func()
	ok := false
	defer func() {
		if !ok {
			for i := len(reverts) - 1; i >= 0; i-- {
				reverts[i]()
			}
		}
	}()
	reverts = append(reverts, func() { d.afterExit(context.WithoutCancel(ctx), h, p) })

	progress.Report(ctx, 10, "preparing boot files")
	qc, err := d.qemuConfig(ctx, h, cfg, p)
	if err != nil {
		return 0, nil, err
	}
	if adjust != nil {
		adjust(&qc)
	}
	// QEMU would make the console log 0644: it holds whatever the guest printed.
	if err := ensureFile(p.consoleLog, 0o600); err != nil {
		return 0, nil, err
	}
	if err := d.handOver(p, cfg); err != nil {
		return 0, nil, fmt.Errorf("vm: handing files to the qemu user: %w", err)
	}
	if err := d.checkReachable(ctx, cfg.diskPath(p)); err != nil {
		return 0, nil, err
	}
	logTo, logPID, release, err := d.startConsoleLog(p)
	if err != nil {
		return 0, nil, err
	}
	reverts = append(reverts, release)
	qc.ConsoleLog = logTo
	tpmPID := 0
	if qc.TPMSocket != "" {
		if tpmPID, err = d.startSwtpm(ctx, p); err != nil {
			return 0, nil, err
		}
	}
	args, err := qemucmd.Build(qc)
	if err != nil {
		return 0, nil, errdefs.Invalid("vm: %v", err)
	}
	progress.Report(ctx, 40, "starting qemu")
	pid, exited, err := d.spawn(d.opts.QEMU, args, p.qemuLog)
	if err != nil {
		return 0, nil, fmt.Errorf("vm: starting qemu: %w", err)
	}
	reverts = append(reverts, func() { d.kill(pid, p.qmp) })
	// QEMU's helpers (the console log's drain, swtpm) go with it: out of the daemon's cgroup, which
	// a service manager may kill whole when the daemon restarts.
	if err := d.joinCgroup(h.ID, qemuLimits(qc, h.Spec.Config["limits.cpu"] != ""), pid, logPID, tpmPID); err != nil {
		return 0, nil, fmt.Errorf("vm: cgroup: %w", err)
	}
	c, err := waitQMP(ctx, p, exited, qmpStartTimeout)
	if err != nil {
		return 0, nil, err
	}
	ok = true
	return pid, c, nil
}

// qemuConfig turns the instance's spec and create-time choices into a command-line config.
func (d *Driver) qemuConfig(ctx context.Context, h *driver.Handle, cfg instanceConfig, p paths) (qemucmd.Config, error) {
	vcpus, mem, err := sizing(&h.Spec, cfg.Windows)
	if err != nil {
		return qemucmd.Config{}, err
	}
	qc := qemucmd.Config{
		Name: cfg.Name, Machine: cfg.Machine, MachineType: cfg.MachineType, Accel: resolveAccel(d.opts.Accel),
		VCPUs: vcpus, MemoryMiB: mem,
		Disks:     []qemucmd.Disk{{ID: "root", Path: cfg.diskPath(p), Format: cfg.diskFormat()}},
		QMPSocket: p.qmp, ConsoleSocket: p.console, ConsoleLog: p.consoleLog,
		AgentSocket: p.agent, PIDFile: p.pidfile,
		Windows: cfg.Windows, StartPaused: true,
	}
	if isUUID(h.ID) {
		qc.UUID = h.ID
	}
	if qc.Name == "" {
		qc.Name = h.ID
	}
	if cfg.Machine == qemucmd.Q35 {
		qc.HotplugPorts = 4 // room for volumes and NICs attached while running
	}
	if cfg.Firmware == "uefi" {
		fw := d.ovmf(cfg.Windows)
		qc.Firmware = qemucmd.Firmware{Code: fw.code, Vars: p.vars, SecureBoot: cfg.Windows}
		qc.DebugConLog = p.firmwareLog
	}
	if cfg.Windows {
		qc.TPMSocket = p.tpm
		if iso := h.Spec.Config[KeyDriverISO]; iso != "" {
			if _, err := os.Stat(iso); err != nil {
				return qc, errdefs.Invalid("vm: %s: %v", KeyDriverISO, err)
			}
			qc.CDROMs = []string{iso}
		}
	} else if !cfg.DiskBoot { // a disk image's firmware boots its own loader from the root disk
		if err := d.directBoot(ctx, &qc, cfg); err != nil {
			return qc, err
		}
	}
	nics, err := d.setupNICs(ctx, h)
	if err != nil {
		return qc, err
	}
	qc.NICs = nics
	return qc, nil
}

// directBoot boots a rootfs image: its ext4 disk has no boot loader, so QEMU loads the guest kernel
// and our initramfs. SeaBIOS and microvm take the uncompressed vmlinux (PVH entry, ~3 s faster
// under TCG than unpacking the bzImage); OVMF only loads an EFI-stub bzImage, so UEFI gets vmlinuz.
func (d *Driver) directBoot(ctx context.Context, qc *qemucmd.Config, cfg instanceConfig) error {
	kernel := d.kernelPath("vmlinux")
	if cfg.Firmware == "uefi" {
		kernel = d.kernelPath("vmlinuz")
	}
	if _, err := os.Stat(kernel); err != nil {
		return errdefs.Unavailable("vm: no guest kernel %s: run scripts/setup.sh", kernel)
	}
	initrd, err := d.initramfs(ctx)
	if err != nil {
		return err
	}
	tsc := d.opts.TSCKHz
	if tsc == 0 {
		tsc = hostTSCKHz()
	}
	// The instance name is the guest's hostname, as it is a container's: the initramfs writes it into
	// the root disk's /etc/hostname before the image's init reads it.
	extra := []string{"root=/dev/vda", "rootfstype=ext4", "tandem.hostname=" + cfg.Name}
	if cfg.KernelCmdline != "" {
		extra = append(extra, cfg.KernelCmdline)
	}
	qc.Kernel, qc.Initrd = kernel, initrd
	qc.Append = qemucmd.KernelArgs(cfg.Machine, tsc, extra...)
	return nil
}

// initramfs returns the current initramfs, built on first use and whenever an input changes.
func (d *Driver) initramfs(ctx context.Context) (string, error) {
	version, err := os.ReadFile(d.kernelPath("kernel-version"))
	if err != nil {
		return "", errdefs.Unavailable("vm: guest kernel version: %v (run scripts/setup.sh)", err)
	}
	agent := d.opts.AgentPath
	if _, err := os.Stat(agent); err != nil {
		agent = "" // the VM boots, but exec and guest info are unavailable
	}
	spec := bootfs.Initramfs{
		Busybox:    d.opts.Busybox,
		ModulesDir: filepath.Join(d.opts.KernelDir, "lib", "modules", string(trimSpace(version))),
		Agent:      agent,
	}
	path, err := spec.Build(ctx, filepath.Join(d.opts.Dir, "boot"))
	if err != nil {
		return "", fmt.Errorf("vm: initramfs: %w", err)
	}
	return path, nil
}

// setupNICs makes a tap per nic device through Networks, or user-mode NICs when the driver runs
// without a network backend (tests).
func (d *Driver) setupNICs(ctx context.Context, h *driver.Handle) ([]qemucmd.NIC, error) {
	names := nicDevices(&h.Spec)
	if len(names) == 0 && d.opts.UserNetwork {
		return []qemucmd.NIC{{ID: "eth0", MAC: macFor(h.ID, "eth0", nil), User: true}}, nil
	}
	var nics []qemucmd.NIC
	for _, name := range names {
		dev := h.Spec.Devices[name]
		nic := qemucmd.NIC{ID: "nic-" + name, MAC: macFor(h.ID, name, dev)}
		switch {
		case d.opts.Networks != nil:
			tap, mac, err := d.opts.Networks.SetupTap(ctx, h, name, dev)
			if err != nil {
				return nil, fmt.Errorf("vm: nic %s: %w", name, err)
			}
			nic.Tap, nic.MAC = tap, mac
		case d.opts.UserNetwork:
			nic.User = true
		default:
			return nil, errdefs.Unavailable("vm: nic %s: this host has no network backend for VMs", name)
		}
		nics = append(nics, nic)
	}
	return nics, nil
}

// startSwtpm runs a TPM 2.0 emulator for the VM and returns its pid; --terminate makes it exit
// with QEMU.
func (d *Driver) startSwtpm(ctx context.Context, p paths) (int, error) {
	if err := os.MkdirAll(p.tpmState, 0o700); err != nil {
		return 0, err
	}
	args := []string{"socket", "--tpm2", "--terminate",
		"--tpmstate", "dir=" + p.tpmState,
		"--ctrl", "type=unixio,path=" + p.tpm,
		"--pid", "file=" + p.tpmPID,
		"--flags", "startup-clear"}
	pid, exited, err := d.spawn(d.opts.Swtpm, args, p.swtpmLog)
	if err != nil {
		return 0, errdefs.Unavailable("vm: swtpm: %v (install swtpm for Windows VMs)", err)
	}
	deadline := time.After(swtpmStartTimeout)
	for {
		if _, err := os.Stat(p.tpm); err == nil {
			return pid, nil
		}
		select {
		case <-exited:
			return 0, fmt.Errorf("vm: swtpm exited at start-up: %s", logTail(p.swtpmLog))
		case <-deadline:
			return 0, fmt.Errorf("vm: swtpm hung: no socket after %v", swtpmStartTimeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ensureFile makes path exist with mode perm (an existing file keeps its contents).
func ensureFile(path string, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, perm)
	if err != nil {
		return err
	}
	f.Close()
	return os.Chmod(path, perm)
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
		default:
			return false
		}
	}
	return true
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
