package vm

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
	"tandem/internal/qmp"
)

// sourceState describes a running VM for a migration destination: what it needs to start QEMU with
// the same virtual hardware, and what it checks before agreeing to.
type sourceState struct {
	Config      instanceConfig    `json:"config"`
	MachineType string            `json:"machine_type"` // versioned: pc-q35-7.2
	QEMU        string            `json:"qemu"`         // the source's version, 7.2.22
	Accel       string            `json:"accel"`
	CPU         string            `json:"cpu"` // CPU model: host under KVM, max under TCG
	CPUFlags    []string          `json:"cpu_flags,omitempty"`
	VCPUs       int               `json:"vcpus"`
	MemoryMiB   int               `json:"memory_mib"`
	DiskPath    string            `json:"disk_path"`
	DiskSize    int64             `json:"disk_size"`      // virtual bytes
	DiskUsed    int64             `json:"disk_used"`      // allocated bytes on the source
	NICs        map[string]string `json:"nics,omitempty"` // device id -> MAC
}

// migrationMemoryHeadroom is what a destination needs beyond guest RAM (QEMU itself, TCG's buffer).
const migrationMemoryHeadroom = 128 << 20

// PrepareOutgoing checks that a running VM can migrate and records in its handle (DriverState) what
// a destination needs: send the handle, as the daemon persists it, to the destination's CanRun and
// PrepareIncoming. It changes nothing in the VM.
func (d *Driver) PrepareOutgoing(ctx context.Context, h *driver.Handle) error {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return err
	}
	defer unlock()
	if err := migratable(cfg); err != nil {
		return err
	}
	pid := d.qemuPID(p)
	if pid == 0 {
		return driver.ErrNotRunning
	}
	src := &sourceState{Config: cfg, Accel: resolveAccel(d.opts.Accel), DiskPath: cfg.diskPath(p), NICs: map[string]string{}}
	src.Config.Base, src.Config.Outgoing, src.Config.Incoming = "", "", ""
	err = withQMP(ctx, p, func(c *qmp.Client) error {
		st, err := c.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if st.Status != qmp.StateRunning && st.Status != qmp.StatePaused {
			return errdefs.Conflict("vm: cannot migrate a VM that is %s", st.Status)
		}
		if m, err := c.QueryMigrate(ctx); err == nil && activeMigration(m.Status) {
			return errdefs.Conflict("vm: a migration is already under way")
		}
		var typ string
		if err := qomGet(ctx, c, "/machine", "type", &typ); err != nil {
			return err
		}
		src.MachineType = strings.TrimSuffix(typ, "-machine")
		maj, min, mic := c.Version()
		src.QEMU = fmt.Sprintf("%d.%d.%d", maj, min, mic)
		var mem struct {
			Base int64 `json:"base-memory"`
		}
		if err := c.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
			return err
		}
		src.MemoryMiB = int(mem.Base >> 20)
		cpus, err := c.QueryCPUsFast(ctx)
		if err != nil {
			return err
		}
		src.VCPUs = len(cpus)
		if err := rootDiskOnly(ctx, c, src); err != nil {
			return err
		}
		for _, id := range nicIDs(h, d.opts.UserNetwork) {
			var mac string
			if err := qomGet(ctx, c, "/machine/peripheral/"+id, "mac", &mac); err != nil {
				return fmt.Errorf("nic %s: %w", id, err)
			}
			src.NICs[id] = mac
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vm: preparing the migration: %w", err)
	}
	src.CPU = "max"
	if src.Accel == qemucmd.AccelKVM {
		src.CPU, src.CPUFlags = "host", hostCPUFlags()
	}
	setState(h, handleState{PID: pid, Source: src})
	return nil
}

// migratable refuses what a migration does not carry yet.
func migratable(cfg instanceConfig) error {
	if cfg.Firmware == "uefi" || cfg.Windows {
		return errdefs.Unavailable("vm: live migration of UEFI VMs is not supported: the OVMF variable store and TPM state are not carried")
	}
	if cfg.Incoming != "" {
		return errdefs.Conflict("vm: an incoming migration of this instance is unfinished")
	}
	return nil
}

// rootDiskOnly fills in the root disk's sizes and refuses other writable disks (hotplugged
// volumes), which would need a mirror each.
func rootDiskOnly(ctx context.Context, c *qmp.Client, src *sourceState) error {
	devs, err := queryBlock(ctx, c)
	if err != nil {
		return err
	}
	found := false
	for _, dev := range devs {
		switch {
		case dev.Inserted == nil || dev.Inserted.ReadOnly:
		case dev.Inserted.NodeName == rootNode:
			found = true
			src.DiskSize, src.DiskUsed = dev.Inserted.Image.VirtualSize, dev.Inserted.Image.ActualSize
		default:
			return errdefs.Unavailable("vm: disk %s%s is attached: live migration carries only the root disk", dev.Device, dev.QDev)
		}
	}
	if !found {
		return fmt.Errorf("no root disk node %s", rootNode)
	}
	return nil
}

// nicIDs are the QEMU device ids of the instance's NICs, as qemuConfig names them.
func nicIDs(h *driver.Handle, userNetwork bool) []string {
	names := nicDevices(&h.Spec)
	if len(names) == 0 && userNetwork {
		return []string{"eth0"}
	}
	ids := make([]string, len(names))
	for i, n := range names {
		ids[i] = "nic-" + n
	}
	return ids
}

// sourceOf reads what PrepareOutgoing put into a handle.
func sourceOf(h *driver.Handle) (*sourceState, error) {
	src := getState(h).Source
	if src == nil || src.MachineType == "" {
		return nil, errdefs.Invalid("vm: the handle describes no migration source: call PrepareOutgoing on the source first")
	}
	return src, nil
}

// CanRun says whether this host can take the VM the handle describes (after the source's
// PrepareOutgoing) with these options, and why not, before anything stops or starts.
func (d *Driver) CanRun(ctx context.Context, h *driver.Handle, opts IncomingOpts) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	src, err := sourceOf(h)
	if err != nil {
		return err
	}
	if _, err := os.Stat(d.paths(h.ID).config); err == nil {
		return errdefs.Exists("vm: instance %s already exists on this host", h.ID)
	}
	if err := opts.check(); err != nil {
		return err
	}
	if err := migratable(src.Config); err != nil {
		return err
	}
	if info := d.Info(ctx); !info.Available {
		return errdefs.Unavailable("vm: %s", info.Reason)
	}
	d.mu.Lock()
	version := d.version
	d.mu.Unlock()
	if compareVersions(version, src.QEMU) < 0 {
		return errdefs.Unavailable("vm: QEMU %s here is older than the source's %s", version, src.QEMU)
	}
	if err := d.hasMachine(ctx, src.MachineType); err != nil {
		return err
	}
	if accel := resolveAccel(d.opts.Accel); accel != src.Accel {
		return errdefs.Unavailable("vm: the source runs the VM under %s, this host would use %s", src.Accel, accel)
	}
	if src.CPU == "host" {
		if missing := missingFlags(src.CPUFlags, hostCPUFlags()); len(missing) > 0 {
			return errdefs.Unavailable("vm: this host's CPU lacks features the guest may use: %s", strings.Join(missing, " "))
		}
	}
	if avail := memAvailable(); avail > 0 && avail < int64(src.MemoryMiB)<<20+migrationMemoryHeadroom {
		return errdefs.Unavailable("vm: %d MiB of memory available, the VM needs %d MiB and %d MiB for QEMU",
			avail>>20, src.MemoryMiB, migrationMemoryHeadroom>>20)
	}
	if opts.SharedDisk {
		path := opts.diskPath(src)
		if _, err := os.Stat(path); err != nil {
			return errdefs.Unavailable("vm: the shared disk is not visible here: %v", err)
		}
		return nil
	}
	dir := filepath.Dir(opts.DiskPath)
	if opts.DiskPath == "" {
		dir = filepath.Join(d.opts.Dir, "instances")
	}
	if free := freeBytes(dir); free >= 0 && free < src.DiskUsed+64<<20 {
		return errdefs.Unavailable("vm: %d MiB free in %s, the disk needs %d MiB", free>>20, dir, src.DiskUsed>>20)
	}
	return nil
}

// hasMachine checks that this QEMU offers the versioned machine type.
func (d *Driver) hasMachine(ctx context.Context, typ string) error {
	out, err := exec.CommandContext(ctx, d.opts.QEMU, "-machine", "help").Output()
	if err != nil {
		return errdefs.Unavailable("vm: listing machine types: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == typ {
			return nil
		}
	}
	return errdefs.Unavailable("vm: this QEMU has no machine type %s", typ)
}

// compareVersions compares dotted numeric versions.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// hostCPUFlags are /proc/cpuinfo's flags of the first CPU, sorted as the kernel lists them.
func hostCPUFlags() []string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "flags" {
			return strings.Fields(v)
		}
	}
	return nil
}

func missingFlags(want, have []string) []string {
	set := map[string]bool{}
	for _, f := range have {
		set[f] = true
	}
	var missing []string
	for _, f := range want {
		if !set[f] {
			missing = append(missing, f)
		}
	}
	return missing
}

// memAvailable is MemAvailable from /proc/meminfo in bytes, or -1.
func memAvailable() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

// freeBytes is the space available to us in dir's filesystem, or -1.
func freeBytes(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// StoppedDisk returns the root disk file of a stopped VM and its format, for a cold move or a
// copy to read (a running guest's disk would change under the reader).
func (d *Driver) StoppedDisk(ctx context.Context, h *driver.Handle) (path, format string, err error) {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if d.qemuPID(p) != 0 {
		return "", "", errdefs.Conflict("vm: %s runs: stop it before copying its disk", h.ID)
	}
	return cfg.diskPath(p), cfg.diskFormat(), nil
}
