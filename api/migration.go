package api

import (
	"encoding/json"
	"time"
)

// InstanceMovePost is the body of POST /1.0/instances/NAME/move: move the instance to a remote,
// keeping its name, MAC and addresses.
type InstanceMovePost struct {
	Target string `json:"target"` // a remote's name (tandem remote add)
	// Live moves a running instance without stopping it; without it the instance must be stopped.
	Live bool `json:"live,omitempty"`
	// MaxBandwidth caps the transfer (rsync, disk mirror, RAM) in bytes/s; 0: no cap.
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
	// Lazy is for live container moves: post-copy (the container runs on the target while its
	// memory follows). nil: whenever both hosts can; false: never; true: required (the move is
	// refused, with the reason, when the hosts cannot).
	Lazy *bool `json:"lazy,omitempty"`
}

// InstanceCopyPost is the body of POST /1.0/instances/NAME/copy: a new, stopped instance with the
// source's configuration and disk, new MACs and addresses.
type InstanceCopyPost struct {
	Name   string `json:"name"`
	Target string `json:"target,omitempty"` // a remote; empty: this host
	// Storage is the pool for the new instance's root; empty: the source's pool here, on a
	// remote that pool if it has one, else its default pool.
	Storage string `json:"storage,omitempty"`
	// MaxBandwidth caps a copy to a remote in bytes/s; 0: no cap.
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
}

// Migration kinds.
const (
	MigrationMove = "move"
	MigrationCopy = "copy"
)

// Storage modes of a migration's root disk.
const (
	StorageShared = "shared" // the root is on a pool both hosts see: nothing is copied
	StorageCopy   = "copy"   // the root is copied to the destination
)

// MigrationPost is what a source host sends a destination (POST /1.0/migrations) to start
// receiving an instance. Hosts call it over mutual TLS; users never do.
type MigrationPost struct {
	ID      string            `json:"id"`
	Kind    string            `json:"kind"` // move or copy
	Live    bool              `json:"live,omitempty"`
	Storage string            `json:"storage"` // shared or copy
	Name    string            `json:"name"`
	Type    string            `json:"type"`
	Image   string            `json:"image"`             // what the user named
	ImageFP string            `json:"image_fingerprint"` // what the destination must have
	Config  map[string]string `json:"config"`
	Devices Devices           `json:"devices"` // NICs carry hwaddr and ipv4.address on a move
	Created time.Time         `json:"created_at"`
	// Handle is the source driver's handle (driver state included), as the driver left it.
	Handle json.RawMessage `json:"handle"`
	// Memory is the instance's memory in bytes, for the destination's capacity check.
	Memory int64 `json:"memory,omitempty"`
	// DiskBytes is what the root disk holds, for the destination's capacity check (copy storage).
	DiskBytes int64 `json:"disk_bytes,omitempty"`
	// SharedRoot is, with shared storage, the root's path (both hosts see it there).
	SharedRoot string `json:"shared_root,omitempty"`
	// Pool is, when a stopped instance's root is copied, the destination's pool for it; empty:
	// the source's pool name if the destination has such a pool, else its default pool.
	Pool string `json:"pool,omitempty"`
}

// Fresh says whether the destination makes the instance anew, as a create would (its own
// handle, its root on its own pool), for the source to fill the root: a stopped instance whose
// root is copied. Live moves and shared roots take the source's handle over instead.
func (p MigrationPost) Fresh() bool { return !p.Live && p.Storage == StorageCopy }

// MigrationRestorePost is the body of POST /1.0/migrations/ID/restore.
type MigrationRestorePost struct {
	// DumpDir is where a container's dump is when both hosts see it (shared storage); empty: the
	// destination's copy of it.
	DumpDir string `json:"dump_dir,omitempty"`
	// Lazy restores a container with its memory still on the source: the destination's
	// lazy-pages daemon pulls it through the "pages" tunnels the source opened.
	Lazy bool `json:"lazy,omitempty"`
}

// Migration states on the destination.
const (
	MigrationPreparing = "preparing" // records made, waiting for data
	MigrationRunning   = "running"   // restored: runs here, waiting for the source's commit
	MigrationCommitted = "committed" // the instance is this host's
	MigrationAborted   = "aborted"   // nothing of it is left here
)

// MigrationInfo is the destination's answer about one incoming migration.
type MigrationInfo struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
	// Rootfs / DumpDir / DiskPath say where things go on the destination (for messages).
	Rootfs string `json:"rootfs,omitempty"`
	// Modes lists the container migration modes the destination offers (lazy, predump).
	Modes []string `json:"modes,omitempty"`
	// Notes say why the destination does not offer a mode for this instance.
	Notes []string `json:"notes,omitempty"`
	Error string   `json:"error,omitempty"`
	// RestoreMillis is how long the destination took to restore or resume the instance.
	RestoreMillis int64 `json:"restore_ms,omitempty"`
}

// MigrationResult is the metadata of a finished move or copy operation.
type MigrationResult struct {
	Mode        string `json:"mode"` // cold, live-shared, live-copy, lazy, ...
	TotalMillis int64  `json:"total_ms"`
	// FreezeMillis: a container's freeze (dump to running on the destination).
	FreezeMillis int64 `json:"freeze_ms,omitempty"`
	// PagesMillis: a lazy move's memory transfer, from the restore to the last page.
	PagesMillis int64 `json:"pages_ms,omitempty"`
	// DowntimeMillis: a VM's downtime as QEMU measured it.
	DowntimeMillis int64 `json:"downtime_ms,omitempty"`
	BytesSent      int64 `json:"bytes_sent,omitempty"`
	// Notes say why a faster mode did not run (what the hosts' kernels and settings lack).
	Notes []string `json:"notes,omitempty"`
}
