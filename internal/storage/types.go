package storage

import (
	"context"
	"log/slog"
	"time"
)

// Pool drivers.
const (
	DriverDir    = "dir"
	DriverBtrfs  = "btrfs"
	DriverShared = "shared"
)

// Volume types. A volume is named by "TYPE/NAME"; a bare NAME means a custom volume.
const (
	TypeCustom    = "custom"
	TypeContainer = "container"
	TypeVM        = "vm"
	TypeImage     = "image" // a per-pool copy of an image that instance roots are cloned from
)

// Content types.
const (
	ContentFilesystem = "filesystem"
	ContentBlock      = "block"
)

// Formats: how a volume's data is stored inside its data directory.
const (
	FormatDir    = "dir"    // the data directory itself holds the files (dir pools)
	FormatSubvol = "subvol" // the data directory is a btrfs subvolume holding the files
	FormatExt4   = "ext4"   // root.img: an ext4 image, loop-mounted for containers, a raw disk for VMs
	FormatQcow2  = "qcow2"  // disk.qcow2: a qcow2 disk for VMs
)

// Records' states.
const (
	StateCreating = "creating"
	StateReady    = "ready"
	StateDeleting = "deleting"
)

// Size limits.
const (
	MaxSize         = uint64(1) << 60 // 1 EiB: anything larger is a typo
	MinSize         = uint64(4) << 20 // smaller ext4 or qcow2 volumes are useless
	DefaultRootSize = uint64(10) << 30
	DefaultLeaseTTL = 30 * time.Second
)

// Options configure a Manager.
type Options struct {
	Dir    string // <daemon dir>/storage: pool records, loop files, mount points
	HostID string // unique per daemon; names the holder of shared-pool leases
	// LeaseTTL is how long a lease on a volume outlives its holder's last heartbeat (default 30s).
	LeaseTTL time.Duration
	Logger   *slog.Logger
	// MinFreeForVM is the free space a pool must have for a new VM root (default
	// DefaultMinFreeForVM): a VM's disk is thin, and a guest writing into a full pool is paused by
	// QEMU on the I/O error.
	MinFreeForVM uint64
}

// DefaultMinFreeForVM is Options.MinFreeForVM's default.
const DefaultMinFreeForVM = 256 << 20

// PoolConfig is what CreatePool needs.
type PoolConfig struct {
	Name   string `json:"name"`
	Driver string `json:"driver"`
	// Source: dir: a directory (default <Dir>/pools/NAME); btrfs: an existing btrfs mount, or empty
	// with Size for a loop file tandem makes; shared: a mount of a shared filesystem.
	Source string `json:"source,omitempty"`
	Size   uint64 `json:"size,omitempty"`
}

// Pool is a pool as recorded on this host, plus live figures filled by GetPool and ListPools.
type Pool struct {
	Name      string    `json:"name"`
	Driver    string    `json:"driver"`
	Source    string    `json:"source,omitempty"` // as configured
	Path      string    `json:"path"`             // the pool's root directory on this host
	LoopFile  string    `json:"loop_file,omitempty"`
	Size      uint64    `json:"size,omitempty"`
	State     string    `json:"state"`
	CreatedAt time.Time `json:"created_at"`

	Total  uint64 `json:"total,omitempty"`
	Used   uint64 `json:"used,omitempty"`
	Free   uint64 `json:"free,omitempty"`
	Status string `json:"status,omitempty"` // "ok", or why the pool cannot be used now
}

// VolumeConfig is what CreateVolume needs.
type VolumeConfig struct {
	Name        string `json:"name"`
	Type        string `json:"type,omitempty"`         // default custom
	ContentType string `json:"content_type,omitempty"` // default filesystem (block for type vm)
	Size        uint64 `json:"size,omitempty"`         // required for ext4 and block volumes
}

// Volume is a volume's record. It lives in the pool, so every host of a shared pool sees it.
type Volume struct {
	Pool        string       `json:"pool,omitempty"` // this host's name for the pool; not stored
	Name        string       `json:"name"`
	Type        string       `json:"type"`
	ContentType string       `json:"content_type"`
	Format      string       `json:"format"`
	Size        uint64       `json:"size,omitempty"`
	Base        string       `json:"base,omitempty"` // the image volume this was cloned from
	Snapshots   []Snapshot   `json:"snapshots,omitempty"`
	UsedBy      []Attachment `json:"used_by,omitempty"`
	State       string       `json:"state"`
	Pending     *Operation   `json:"pending,omitempty"` // the multi-step operation under way
	CreatedAt   time.Time    `json:"created_at"`
	Usage       uint64       `json:"usage,omitempty"` // bytes used, filled by GetVolume where cheap
}

// Ref is the volume's "TYPE/NAME".
func (v *Volume) Ref() string { return v.Type + "/" + v.Name }

// Snapshot is a point-in-time copy of a volume.
type Snapshot struct {
	Name      string    `json:"name"`
	Size      uint64    `json:"size,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// Attachment records an instance using a volume.
type Attachment struct {
	Instance string `json:"instance"`
	ReadOnly bool   `json:"readonly,omitempty"`
	Host     string `json:"host,omitempty"`
}

// Operation is the record of a multi-step operation: Recover finishes or undoes it after a crash.
type Operation struct {
	ID       string    `json:"id"`
	Op       string    `json:"op"` // create, copy, delete, snapshot, delete-snapshot, restore, resize
	Host     string    `json:"host"`
	Snapshot string    `json:"snapshot,omitempty"`
	Size     uint64    `json:"size,omitempty"`
	Source   string    `json:"source,omitempty"`
	Tmp      string    `json:"tmp,omitempty"` // a directory under the pool's tmp/ owned by the operation
	Started  time.Time `json:"started"`
}

// ImageSource is what an instance root is made from.
type ImageSource struct {
	// Fingerprint names the per-pool copy of the image (btrfs container roots and VM bases).
	Fingerprint string
	RootfsDir   string // containers: the image's unpacked rootfs (read only)
	BaseDisk    string // VMs: a bootable disk image
	BaseFormat  string // "qcow2" (default) or "raw"
	// Prepare, if set, fills in RootfsDir or BaseDisk when they are first needed (a VM's base disk
	// only when the pool has no copy of the image yet); done runs once they have been copied.
	Prepare func(ctx context.Context, src *ImageSource) (done func(), err error)
}
