package api

import "time"

// Storage pool drivers.
const (
	StorageDriverDir    = "dir"
	StorageDriverBtrfs  = "btrfs"
	StorageDriverShared = "shared"
)

// Storage volume content types.
const (
	ContentFilesystem = "filesystem" // an ext4 image: mounted into containers, a raw disk for VMs
	ContentBlock      = "block"      // a qcow2 disk, for VMs only
)

// StoragePool is what GET /1.0/storage-pools/POOL returns. Sizes are byte counts.
type StoragePool struct {
	Name   string `json:"name" yaml:"name"`
	Driver string `json:"driver" yaml:"driver"` // dir, btrfs or shared
	// Source is the path as configured (empty: tandem's own directory, or a btrfs loop file).
	Source string `json:"source,omitempty" yaml:"source,omitempty"`
	Path   string `json:"path" yaml:"path"`                     // the pool's root on this host
	Size   uint64 `json:"size,omitempty" yaml:"size,omitempty"` // a btrfs loop file's size
	// Status is "ok", or why the pool cannot be used now (e.g. "unavailable: ... not mounted?").
	Status string `json:"status" yaml:"status"`
	Total  uint64 `json:"total" yaml:"total"`
	Used   uint64 `json:"used" yaml:"used"`
	Free   uint64 `json:"free" yaml:"free"`
	// Volumes counts the pool's volumes of every type (custom, container, vm, image).
	Volumes   int       `json:"volumes" yaml:"volumes"`
	CreatedAt time.Time `json:"created_at" yaml:"created_at"`
}

// StoragePoolsPost is the body of POST /1.0/storage-pools.
type StoragePoolsPost struct {
	Name   string `json:"name"`
	Driver string `json:"driver"` // dir, btrfs or shared
	// Source: dir: a directory (default: inside tandemd's state directory); btrfs: an existing btrfs
	// mount (or empty, with size, for a loop file tandem makes); shared: a mount of a shared filesystem.
	Source string `json:"source,omitempty"`
	// Size of a btrfs loop file: "10GiB", "500MB" or a byte count "1073741824".
	Size string `json:"size,omitempty"`
}

// StorageVolume is what GET /1.0/storage-pools/POOL/volumes/NAME returns. A volume is known by
// TYPE/NAME (TYPE custom, container, vm or image); a bare NAME means a custom volume.
type StorageVolume struct {
	Name        string `json:"name" yaml:"name"`
	Type        string `json:"type" yaml:"type"`
	Pool        string `json:"pool" yaml:"pool"`
	ContentType string `json:"content_type" yaml:"content_type"` // filesystem or block
	Format      string `json:"format" yaml:"format"`             // dir, subvol, ext4 or qcow2
	// Size is the volume's size or quota in bytes (0: a plain directory with no limit).
	Size uint64 `json:"size" yaml:"size"`
	// Usage is the bytes the volume takes in the pool, where that is cheap to learn (single volume only).
	Usage uint64 `json:"usage,omitempty" yaml:"usage,omitempty"`
	// Base is the image volume an instance root was cloned from.
	Base      string   `json:"base,omitempty" yaml:"base,omitempty"`
	Snapshots []string `json:"snapshots" yaml:"snapshots"` // snapshot names, oldest first
	// UsedBy lists the instances that have the volume attached; Attachments says how.
	UsedBy      []string            `json:"used_by" yaml:"used_by"`
	Attachments []StorageAttachment `json:"attachments" yaml:"attachments"`
	State       string              `json:"state" yaml:"state"`                         // creating, ready or deleting
	Pending     string              `json:"pending,omitempty" yaml:"pending,omitempty"` // the multi-step change under way
	CreatedAt   time.Time           `json:"created_at" yaml:"created_at"`
}

// StorageAttachment is one instance using a volume.
type StorageAttachment struct {
	Instance string `json:"instance" yaml:"instance"`
	ReadOnly bool   `json:"readonly" yaml:"readonly"`
	Host     string `json:"host,omitempty" yaml:"host,omitempty"`
}

// StorageSnapshot is one snapshot of a volume (GET .../volumes/NAME/snapshots).
type StorageSnapshot struct {
	Name      string    `json:"name" yaml:"name"`
	Size      uint64    `json:"size,omitempty" yaml:"size,omitempty"`
	CreatedAt time.Time `json:"created_at" yaml:"created_at"`
}

// StorageVolumesPost is the body of POST /1.0/storage-pools/POOL/volumes: a custom volume.
type StorageVolumesPost struct {
	Name        string `json:"name"`
	ContentType string `json:"content_type,omitempty"` // filesystem (default) or block
	Size        string `json:"size"`                   // required: "1GiB", "500MB" or a byte count
}

// StorageVolumePatch is the body of PATCH /1.0/storage-pools/POOL/volumes/NAME.
type StorageVolumePatch struct {
	Size string `json:"size"` // the new size: "2GiB" or a byte count
}

// StorageSnapshotsPost is the body of POST .../volumes/NAME/snapshots.
type StorageSnapshotsPost struct {
	Name string `json:"name"`
}

// StorageVolumeRestorePost is the body of POST .../volumes/NAME/restore.
type StorageVolumeRestorePost struct {
	Snapshot string `json:"snapshot"`
}

// StorageVolumeCopyPost is the body of POST .../volumes/NAME/copy.
type StorageVolumeCopyPost struct {
	TargetPool string `json:"target_pool"`
	// TargetName: NAME keeps the source's type, TYPE/NAME sets it; empty keeps the source's name.
	TargetName string `json:"target_name,omitempty"`
}
