// Package vm is the QEMU driver: it starts QEMU directly (no libvirt) in its own session, so a VM
// outlives the daemon, and drives it over QMP. A rootfs image boots with the guest kernel and an
// initramfs this package builds; the guest agent (tandem-agent) rides in that initramfs and serves
// exec, info and files over a virtio-serial port.
//
// Files: <Dir>/instances/<id>/ holds an instance's overlay disk, logs and config; <Dir>/bases/ the
// per-image ext4 base disks; <Dir>/boot/ the initramfs. <RunDir>/<id>/ holds the sockets and pidfiles,
// kept short because a unix socket path has at most 107 bytes. A root disk on a storage pool
// (Spec.Root) is used where it is and never deleted here; without one, vm.disk_dir puts the root
// disk in another directory.
//
// Live migration: migcheck.go (what the handle carries to the destination, CanRun), incoming.go
// (destination), outgoing.go (source, and the sequence the daemon follows).
package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"tandem/internal/agent"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

// DefaultKernelDir is where scripts/setup.sh installs the guest kernel: vmlinux, vmlinuz,
// kernel-version and lib/modules/VERSION/.
const DefaultKernelDir = "/usr/local/share/tandem/guest"

// Networks connects VM NICs to host networks; the daemon wires it to the network code.
type Networks interface {
	// SetupTap creates the tap device for a NIC on the network dev names and returns its name and
	// the MAC the network assigned the NIC (DHCP hands the NIC its address by that MAC).
	SetupTap(ctx context.Context, h *driver.Handle, nic string, dev map[string]string) (tap, mac string, err error)
	// TeardownTap removes it; a tap that is already gone is not an error.
	TeardownTap(ctx context.Context, h *driver.Handle, nic string) error
}

// Options configure the driver. Dir, RunDir and Images are required.
type Options struct {
	Dir    string // persistent state: disks, logs
	RunDir string // sockets and pidfiles; short, e.g. /run/tandem/vm
	Images driver.Images
	Accel  string // kvm, tcg or auto (default: KVM when /dev/kvm opens, else TCG)
	QEMU   string // default qemu-system-x86_64 on PATH
	// KernelDir holds the guest kernel (default DefaultKernelDir).
	KernelDir string
	// AgentPath is the guest agent binary put into every VM (default: tandem-agent next to the
	// running executable). Without one VMs boot but cannot exec.
	AgentPath string
	Busybox   string // static busybox for the initramfs (default /usr/bin/busybox or /bin/busybox)
	OVMFDir   string // default /usr/share/OVMF
	Swtpm     string // default swtpm on PATH
	// Networks creates taps for nic devices. Nil with UserNetwork: NICs use QEMU's user-mode network
	// (and a VM without nic devices gets one), which is what tests use.
	Networks    Networks
	UserNetwork bool
	TSCKHz      int // the host TSC rate for microvm guests; default read from /proc/cpuinfo
	// User, if set, is the unprivileged user QEMU and swtpm run as (its "kvm" group is added for
	// /dev/kvm); the instance's files are handed to it at start. Empty: the daemon's own user.
	User string
	// CgroupParent, if set, puts each QEMU in the cgroup /CgroupParent/<id> with the VM's limits.
	CgroupParent string
	// ConsoleLogHelper, if set, is the executable run with ConsoleLogArg as its first argument to
	// keep a VM's console log capped at ConsoleLogMax (default logfile.DefaultMax), rotated to
	// console.log.1; the daemon re-executes itself (its main calls MaybeRunConsoleLog). Unset,
	// QEMU writes the log itself, uncapped.
	ConsoleLogHelper string
	ConsoleLogMax    int64
}

// Driver is the QEMU driver.
type Driver struct {
	opts    Options
	cred    *syscall.Credential // QEMU's user, nil for the daemon's
	version string              // QEMU's, once it has run

	mu       sync.Mutex
	locks    map[string]*sync.Mutex // per instance: one lifecycle operation at a time
	exits    map[int]chan struct{}  // children we started, closed when reaped
	agents   map[string]*agent.Client
	consoles map[string]bool
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Pauser  = (*Driver)(nil)
	_ driver.Statter = (*Driver)(nil)
)

// longestSocket is the longest file name put in an instance's run dir.
const longestSocket = "console.sock"

// New checks the options and returns a driver. It does not need QEMU to be installed: Info says
// whether the driver can run here.
func New(opts Options) (*Driver, error) {
	if opts.Dir == "" || opts.RunDir == "" || opts.Images == nil {
		return nil, fmt.Errorf("vm: Dir, RunDir and Images are required")
	}
	// An instance id is a 36-character UUID: its sockets must fit in sun_path.
	if n := len(opts.RunDir) + 1 + 36 + 1 + len(longestSocket); n > 107 {
		return nil, fmt.Errorf("vm: RunDir %q is too long for unix socket paths (%d > 107 bytes)", opts.RunDir, n)
	}
	if opts.QEMU == "" {
		opts.QEMU = "qemu-system-x86_64"
	}
	if opts.KernelDir == "" {
		opts.KernelDir = DefaultKernelDir
	}
	if opts.OVMFDir == "" {
		opts.OVMFDir = "/usr/share/OVMF"
	}
	if opts.Swtpm == "" {
		opts.Swtpm = "swtpm"
	}
	if opts.Busybox == "" {
		opts.Busybox = "/usr/bin/busybox"
		if _, err := os.Stat(opts.Busybox); err != nil {
			opts.Busybox = "/bin/busybox"
		}
	}
	if opts.AgentPath == "" {
		if exe, err := os.Executable(); err == nil {
			opts.AgentPath = filepath.Join(filepath.Dir(exe), "tandem-agent")
		}
	}
	cred, err := credential(opts.User)
	if err != nil {
		return nil, err
	}
	// 0711: an unprivileged QEMU must reach its own files below, without listing anyone else's.
	for _, d := range []string{opts.Dir, opts.RunDir, filepath.Join(opts.Dir, "instances"), filepath.Join(opts.Dir, "bases")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("vm: %w", err)
		}
		if cred != nil {
			os.Chmod(d, 0o711)
		}
	}
	return &Driver{opts: opts, cred: cred, locks: map[string]*sync.Mutex{}, exits: map[int]chan struct{}{},
		agents: map[string]*agent.Client{}, consoles: map[string]bool{}}, nil
}

// credential resolves Options.User.
func credential(name string) (*syscall.Credential, error) {
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("vm: qemu user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if g, err := user.LookupGroup("kvm"); err == nil {
		kvm, _ := strconv.Atoi(g.Gid)
		cred.Groups = []uint32{uint32(kvm)}
	}
	return cred, nil
}

// handOver gives an instance's files (and a root disk outside its dir) to QEMU's user before a start.
func (d *Driver) handOver(p paths, cfg instanceConfig) error {
	if d.cred == nil {
		return nil
	}
	uid, gid := int(d.cred.Uid), int(d.cred.Gid)
	if err := os.Chown(p.run, uid, gid); err != nil {
		return err
	}
	if cfg.Disk != "" {
		if err := d.giveFile(cfg.Disk); err != nil {
			return err
		}
	}
	return filepath.WalkDir(p.dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

// giveFile hands a disk QEMU opens by name (a root disk outside the instance dir, a volume
// attached while it runs) to QEMU's user, as libvirt's dynamic ownership does.
func (d *Driver) giveFile(path string) error {
	if d.cred == nil {
		return nil
	}
	return os.Chown(path, int(d.cred.Uid), int(d.cred.Gid))
}

// checkReachable fails clearly when QEMU's user cannot open path read-write: a directory above it
// that it may not search (a shared pool mounted 0700) would otherwise make QEMU fail with a bare
// "Permission denied". It asks the kernel, as that user.
func (d *Driver) checkReachable(ctx context.Context, path string) error {
	if d.cred == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "test", "-r", path, "-a", "-w", path)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: d.cred}
	if err := cmd.Run(); err != nil {
		return errdefs.Unavailable("vm: QEMU's user %s cannot open %s: every directory above it must be searchable by that user (chmod o+x)", d.opts.User, path)
	}
	return nil
}

// Info reports whether QEMU and the guest kernel are here.
func (d *Driver) Info(ctx context.Context) driver.Info {
	info := driver.Info{Name: "vm", Version: "1",
		Capabilities: []string{driver.CapPause, driver.CapExec, driver.CapConsole, driver.CapStats, driver.CapMigrate,
			driver.CapCheckpoint}} // stateful stop: savestate.go
	d.mu.Lock()
	version := d.version
	d.mu.Unlock()
	if version == "" {
		out, err := exec.CommandContext(ctx, d.opts.QEMU, "-version").Output()
		if err != nil {
			info.Reason = fmt.Sprintf("QEMU (%s) does not run: %v", d.opts.QEMU, err)
			return info
		}
		if f := strings.Fields(string(out)); len(f) >= 4 {
			version = f[3]
		}
		d.mu.Lock()
		d.version = version
		d.mu.Unlock()
	}
	info.Version = "1 (qemu " + version + ")"
	if _, err := os.Stat(d.kernelPath("vmlinux")); err != nil {
		info.Reason = fmt.Sprintf("no guest kernel at %s: run scripts/setup.sh", d.opts.KernelDir)
		return info
	}
	info.Available = true
	return info
}

func (d *Driver) kernelPath(name string) string { return filepath.Join(d.opts.KernelDir, name) }

func (d *Driver) instanceDir(id string) string { return filepath.Join(d.opts.Dir, "instances", id) }
func (d *Driver) runDir(id string) string      { return filepath.Join(d.opts.RunDir, id) }

// paths of one instance's files.
type paths struct {
	dir, run                                  string
	config, overlay, consoleLog, qemuLog      string
	vars, tpmState, firmwareLog, swtpmLog     string
	qmp, console, agent, pidfile, tpm, tpmPID string
	consoleFIFO                               string
}

func (d *Driver) paths(id string) paths {
	dir, run := d.instanceDir(id), d.runDir(id)
	return paths{
		dir: dir, run: run,
		config:      filepath.Join(dir, "instance.json"),
		overlay:     filepath.Join(dir, "root.qcow2"),
		consoleLog:  filepath.Join(dir, "console.log"),
		qemuLog:     filepath.Join(dir, "qemu.log"),
		vars:        filepath.Join(dir, "ovmf-vars.fd"),
		tpmState:    filepath.Join(dir, "tpm"),
		firmwareLog: filepath.Join(dir, "firmware.log"),
		swtpmLog:    filepath.Join(dir, "swtpm.log"),
		qmp:         filepath.Join(run, "qmp.sock"),
		console:     filepath.Join(run, "console.sock"),
		agent:       filepath.Join(run, "agent.sock"),
		pidfile:     filepath.Join(run, "qemu.pid"),
		tpm:         filepath.Join(run, "tpm.sock"),
		tpmPID:      filepath.Join(run, "swtpm.pid"),
		consoleFIFO: filepath.Join(run, "console.fifo"),
	}
}

// ConsoleLog returns the file that keeps everything the instance's serial console printed.
func (d *Driver) ConsoleLogPath(h *driver.Handle) string { return d.paths(h.ID).consoleLog }

// ConsoleLog returns what the serial console printed; QEMU writes it whether or not anyone is attached.
func (d *Driver) ConsoleLog(ctx context.Context, h *driver.Handle) (io.ReadCloser, error) {
	if err := checkID(h.ID); err != nil {
		return nil, err
	}
	f, err := os.Open(d.paths(h.ID).consoleLog)
	if errors.Is(err, os.ErrNotExist) {
		return io.NopCloser(strings.NewReader("")), nil
	}
	return f, err
}

// lock serialises lifecycle operations on one instance within this driver.
// openLocked checks the handle's id, takes the instance's lock and loads its config: the prologue of
// every call that changes a VM. The caller defers unlock.
func (d *Driver) openLocked(h *driver.Handle) (paths, instanceConfig, func(), error) {
	if err := checkID(h.ID); err != nil {
		return paths{}, instanceConfig{}, nil, err
	}
	unlock := d.lock(h.ID)
	p := d.paths(h.ID)
	cfg, err := loadConfig(p)
	if err != nil {
		unlock()
		return p, cfg, nil, err
	}
	return p, cfg, unlock, nil
}

func (d *Driver) lock(id string) func() {
	d.mu.Lock()
	l, ok := d.locks[id]
	if !ok {
		l = &sync.Mutex{}
		d.locks[id] = l
	}
	d.mu.Unlock()
	l.Lock()
	return l.Unlock
}

func checkID(id string) error {
	if id == "" || len(id) > 36 || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return errdefs.Invalid("vm: bad instance id %q", id)
	}
	return nil
}
