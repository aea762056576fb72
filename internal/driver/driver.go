// Package driver defines the boundary between the control plane and the backends that run instances:
// a small core interface every backend implements, plus optional capabilities found by type assertion.
package driver

import (
	"context"
	"errors"
	"time"
)

// Status is what a driver observes of an instance.
type Status string

const (
	StatusRunning Status = "Running"
	StatusStopped Status = "Stopped"
	StatusPaused  Status = "Paused"
	// StatusGone means the driver has no trace of the instance (e.g. its process vanished with its state).
	StatusGone Status = "Gone"
)

// ErrNotRunning is returned by operations that need a running instance.
var ErrNotRunning = errors.New("instance is not running")

// Capability names reported in Info.
const (
	CapPause      = "pause"
	CapExec       = "exec"
	CapConsole    = "console"
	CapHotplug    = "hotplug"
	CapCheckpoint = "checkpoint"
	CapMigrate    = "migrate"
	CapStats      = "stats"
)

// Info describes a driver and whether it can run on this host.
type Info struct {
	Name         string
	Version      string
	Available    bool
	Reason       string // why it is not available
	Capabilities []string
	// Missing are capabilities the driver has elsewhere but not on this host, with why (e.g.
	// checkpoint, where CRIU cannot dump).
	Missing map[string]string
}

// Spec is what a driver needs to create an instance.
type Spec struct {
	// ID is unique and assigned by the daemon before Create, so an interrupted Create can still be
	// cleaned up by calling Delete with a Handle of that ID. Drivers name their resources after it.
	ID      string
	Name    string
	Type    string
	Image   string
	Config  map[string]string
	Devices map[string]map[string]string
	// Root is the instance's root disk on a storage pool; nil means the driver keeps a root of its
	// own (drivers used without the control plane, older instances).
	Root *RootDisk `json:",omitempty"`
}

// Root disk formats (RootDisk.Format).
const (
	RootDir   = "dir"   // a directory tree
	RootBtrfs = "btrfs" // a btrfs subvolume holding the tree
	RootExt4  = "ext4"  // an ext4 image file that a container driver loop-mounts while it runs
	RootQcow2 = "qcow2" // a VM disk
	RootRaw   = "raw"   // a VM disk
)

// RootDisk is an instance's root disk on a storage pool. The control plane makes it before Create
// and removes it after Delete; drivers use it in place and never delete it. Path is this host's
// path to it (another host may mount a shared pool elsewhere); the control plane refreshes it
// before every Start.
type RootDisk struct {
	Path   string `json:"path"` // dir, btrfs: the tree; ext4, qcow2, raw: the image file
	Format string `json:"format"`
	Pool   string `json:"pool"`
	Volume string `json:"volume"` // the storage volume, TYPE/NAME
	// Shared: the pool is a filesystem other hosts mount too (a migration moves no disk data).
	Shared bool `json:"shared,omitempty"`
}

// RootSource is what an instance's root disk on a storage pool is made from.
type RootSource struct {
	Fingerprint string // the image; a pool keeps one copy per image and kind
	Dir         string // containers: the image's rootfs tree (read only)
	// Disk gives a VM's bootable base disk (its path and format, qcow2 or raw). It is called only
	// when the pool has no copy of the image yet; done is called once the copy is made.
	Disk func(ctx context.Context) (path, format string, done func(), err error)
}

// RootSourcer is a driver whose instances can have their root disk on a storage pool.
type RootSourcer interface {
	RootSource(ctx context.Context, image string) (RootSource, error)
}

// RootSyncer writes what a running instance has cached for its root disk to the disk, so that a
// snapshot taken now (the instance paused) holds it.
type RootSyncer interface {
	SyncRoot(ctx context.Context, h *Handle) error
}

// StateSnapshotter keeps the memory of a running instance with a snapshot of its disk.
type StateSnapshotter interface {
	// SnapshotState saves the memory of a running or paused instance as snap; it keeps running
	// (paused stays paused).
	SnapshotState(ctx context.Context, h *Handle, snap string) error
	// StateSnapshots lists the snapshots that have memory saved.
	StateSnapshots(ctx context.Context, h *Handle) ([]string, error)
	// RestoreState makes the next Start resume from snap's memory instead of booting; snap ""
	// makes it boot (whatever memory a stateful stop saved no longer fits the disk).
	RestoreState(ctx context.Context, h *Handle, snap string) error
	DeleteStateSnapshot(ctx context.Context, h *Handle, snap string) error
}

// Handle is the persisted link between an instance and its driver. The daemon stores it after every
// driver call, so a driver that changes DriverState (a pid, a socket path) must do so in place.
type Handle struct {
	ID          string `json:"id"`
	Driver      string `json:"driver"`
	Version     int    `json:"version"`
	DriverState []byte `json:"driver_state,omitempty"`
	// Spec is the latest spec, kept so a driver can rebuild what it needs on Start and Recover.
	Spec Spec `json:"spec"`
}

// StopOpts says how to stop.
type StopOpts struct {
	Timeout  time.Duration // graceful shutdown budget before a forced kill
	Force    bool
	Stateful bool
}

// Driver is the core every backend implements. Every call is bounded by ctx.
type Driver interface {
	Info(ctx context.Context) Info
	Create(ctx context.Context, spec *Spec) (*Handle, error)
	Start(ctx context.Context, h *Handle) error
	Stop(ctx context.Context, h *Handle, opts StopOpts) error
	Delete(ctx context.Context, h *Handle) error
	State(ctx context.Context, h *Handle) (Status, error)
	// Recover re-attaches to an instance after a daemon restart; a running instance keeps running.
	Recover(ctx context.Context, h *Handle) error
}

// Pauser freezes and thaws a running instance.
type Pauser interface {
	Pause(ctx context.Context, h *Handle) error
	Resume(ctx context.Context, h *Handle) error
}

// Updater applies a changed spec (config, devices) to an instance, live where it runs.
type Updater interface {
	Update(ctx context.Context, h *Handle, spec *Spec) error
}

// Stats are live figures of a running instance.
type Stats struct {
	CPUTime     time.Duration
	MemoryBytes uint64
	Processes   int
}

// Statter reports live figures of a running instance.
type Statter interface {
	Stats(ctx context.Context, h *Handle) (Stats, error)
}

// ImageInfo is what a driver needs to know about an image.
type ImageInfo struct {
	Fingerprint string
	OS          string // busybox, debian, windows, ...
	// ShutdownSignal makes the image's init power off (e.g. "SIGRTMIN+3" for systemd).
	ShutdownSignal string
	KernelCmdline  string // default kernel command line for a VM, if the image has one
	// DiskFormat is set for a VM disk image ("qcow2" or "raw"): it has a bootable disk and no rootfs.
	DiskFormat string
	// Firmware is what a disk image's boot loader needs: "bios" or "uefi".
	Firmware string
}

// Images gives drivers the files of an image. The daemon wires it to the image store.
type Images interface {
	// Rootfs returns a directory holding the image's unpacked root filesystem. It is shared by all
	// instances of the image and must not be written to: drivers copy it.
	Rootfs(ctx context.Context, image string) (dir string, info ImageInfo, err error)
}

// DiskImages is what Images may offer besides rootfs trees: VM disk images, which boot their own
// disk. A VM driver asks Describe first, so a disk image is never unpacked as a rootfs.
type DiskImages interface {
	// Describe says what an image is without unpacking anything.
	Describe(ctx context.Context, image string) (ImageInfo, error)
	// ExtractDisk writes a disk image's disk to out (whole, or not at all) and returns its format.
	ExtractDisk(ctx context.Context, image, out string) (format string, err error)
}

// NICHotplugger adds and removes network interfaces of a running instance. The address is already
// reserved on the network (the control plane attached it) when AddNIC is called.
type NICHotplugger interface {
	AddNIC(ctx context.Context, h *Handle, name string, dev map[string]string) error
	RemoveNIC(ctx context.Context, h *Handle, name string, dev map[string]string) error
}

// PublishSource is what a stopped instance offers to be made into an image.
type PublishSource struct {
	Rootfs string
	// IDBase and IDSize: host ids [IDBase, IDBase+IDSize) are ids [0, IDSize) in the image.
	IDBase, IDSize uint32
	ShutdownSignal string
	// Done, if set, is called once Rootfs has been read (it unmounts a root mounted for it).
	Done func() error
}

// Publisher turns a stopped instance into the source of a new image.
type Publisher interface {
	PublishSource(ctx context.Context, h *Handle) (PublishSource, error)
}

// Disk is a volume given to a running instance.
type Disk struct {
	// Source is a host file (a VM disk: raw or qcow2) or a host directory (a container mount).
	Source   string
	Format   string // raw or qcow2, for VMs
	Path     string // where a container sees it
	ReadOnly bool
}

// DiskHotplugger attaches volumes to running instances and takes them away.
type DiskHotplugger interface {
	AddDisk(ctx context.Context, h *Handle, name string, d Disk) error
	RemoveDisk(ctx context.Context, h *Handle, name string, d Disk) error
}
