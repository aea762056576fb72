package instance

import (
	"context"
	"fmt"
	"log/slog"
	"maps"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
	"tandem/internal/storage"
	"tandem/internal/store"
)

// Volumes is what the control plane needs of the storage manager: volumes given to instances, and
// instances' root disks.
type Volumes interface {
	GetPool(ctx context.Context, name string) (*storage.Pool, error)
	GetVolume(ctx context.Context, pool, vol string) (*storage.Volume, error)
	Attach(ctx context.Context, pool, vol, instance string, readonly bool) error
	Detach(ctx context.Context, pool, vol, instance string) error
	LocalAttachments(ctx context.Context) ([]storage.VolumeAttachment, error)
	Acquire(ctx context.Context, pool, vol, holder string) (release func() error, err error)
	MountVolume(ctx context.Context, pool, vol string) (string, func() error, error)
	VolumePath(pool, vol string) (string, error)

	CreateInstanceRoot(ctx context.Context, pool, instance, kind string, src storage.ImageSource, size uint64) (*storage.Volume, error)
	AdoptInstanceRoot(ctx context.Context, pool, instance, kind string, incoming bool) (*storage.Volume, error)
	DeleteInstanceRoot(ctx context.Context, pool, instance, kind string) error
	InstanceRoot(ctx context.Context, pool, instance, kind string) (*storage.RootInfo, error)
	ResizeVolume(ctx context.Context, pool, vol string, size uint64) error
	SnapshotVolume(ctx context.Context, pool, vol, snap string) error
	RestoreVolume(ctx context.Context, pool, vol, snap string) error
	DeleteSnapshot(ctx context.Context, pool, vol, snap string) error
	CopyVolume(ctx context.Context, srcPool, srcVol, dstPool, dstName string) (*storage.Volume, error)
}

// SetVolumes turns on disk devices backed by storage volumes.
func (m *Manager) SetVolumes(v Volumes) { m.volumes = v }

// defaultPool is where a disk device without a pool key takes its volume from.
const defaultPool = "default"

func isDisk(dev map[string]string) bool { return dev["type"] == "disk" && dev["source"] != "" }

func diskPool(dev map[string]string) string {
	if p := dev["pool"]; p != "" {
		return p
	}
	return defaultPool
}

// diskNames lists the disk devices of devices in want that old lacks (or has differently).
func diskNames(old, want map[string]map[string]string) []string {
	var out []string
	for name, dev := range want {
		if isDisk(dev) && !maps.Equal(old[name], dev) {
			out = append(out, name)
		}
	}
	return out
}

// attachVolumes records new disk devices on their volumes (the one-writer rule is checked here), or
// records nothing if one is refused.
func (m *Manager) attachVolumes(ctx context.Context, instance, instanceType string, old, want map[string]map[string]string) error {
	names := diskNames(old, want)
	if len(names) > 0 && m.volumes == nil {
		return errdefs.Unavailable("this host has no storage: disk devices cannot be used")
	}
	for i, name := range names {
		dev := want[name]
		if instanceType == api.TypeContainer && dev["path"] == "" {
			m.detachVolumes(instance, want, names[:i])
			return errdefs.Invalid("disk %q: a container needs a path to mount the volume at", name)
		}
		if err := m.volumes.Attach(ctx, diskPool(dev), dev["source"], instance, dev["readonly"] == "true"); err != nil {
			m.detachVolumes(instance, want, names[:i])
			return err
		}
	}
	return nil
}

// detachVolumes drops the bookkeeping of the named disk devices.
func (m *Manager) detachVolumes(instance string, devices map[string]map[string]string, names []string) {
	if m.volumes == nil {
		return
	}
	for _, name := range names {
		dev := devices[name]
		if err := m.volumes.Detach(context.Background(), diskPool(dev), dev["source"], instance); err != nil {
			slog.Error("detach volume", "instance", instance, "disk", name, "err", err)
		}
	}
}

func allDisks(devices map[string]map[string]string) []string { return diskNames(nil, devices) }

// plugDisks gives a running instance its volumes: the volume is taken (a lease, so no other host
// uses it), made ready (mounted for a container, a file path for a VM), then hot-plugged.
func (m *Manager) plugDisks(ctx context.Context, drv driver.Driver, rec *storeRecordView, names []string) error {
	if len(names) == 0 {
		return nil
	}
	hp, ok := drv.(driver.DiskHotplugger)
	if !ok {
		return errdefs.Invalid("%s instances cannot take volumes", rec.Type)
	}
	for i, name := range names {
		if err := m.plugDisk(ctx, hp, rec, name); err != nil {
			m.unplugDisks(ctx, drv, rec, names[:i], true)
			return fmt.Errorf("disk %s: %w", name, err)
		}
	}
	return nil
}

func (m *Manager) plugDisk(ctx context.Context, hp driver.DiskHotplugger, rec *storeRecordView, name string) error {
	dev := rec.Devices[name]
	pool, source := diskPool(dev), dev["source"]
	vol, err := m.volumes.GetVolume(ctx, pool, source)
	if err != nil {
		return err
	}
	release, err := m.volumes.Acquire(ctx, pool, source, rec.Name)
	if err != nil {
		return err
	}
	disk := driver.Disk{Path: dev["path"], ReadOnly: dev["readonly"] == "true", Format: "raw"}
	undo := []func() error{release}
	if rec.Type == api.TypeContainer {
		if vol.ContentType != storage.ContentFilesystem {
			release()
			return errdefs.Invalid("volume %s is a block volume: only VMs can use it", source)
		}
		dir, unmount, err := m.volumes.MountVolume(ctx, pool, source)
		if err != nil {
			release()
			return err
		}
		disk.Source = dir
		undo = append([]func() error{unmount}, undo...)
	} else {
		if disk.Source, err = m.volumes.VolumePath(pool, source); err != nil {
			release()
			return err
		}
		if vol.Format == storage.FormatQcow2 {
			disk.Format = "qcow2"
		}
	}
	if err := hp.AddDisk(ctx, rec.Handle, name, disk); err != nil {
		for _, f := range undo {
			f()
		}
		return err
	}
	m.setDiskCleanup(rec.Name, name, disk, undo)
	return nil
}

// unplugDisks takes the named disks out of the instance (if it still runs) and gives the volumes
// back: unmounted, lease released.
func (m *Manager) unplugDisks(ctx context.Context, drv driver.Driver, rec *storeRecordView, names []string, running bool) {
	hp, _ := drv.(driver.DiskHotplugger)
	for _, name := range names {
		m.mu.Lock()
		c, ok := m.diskCleanups[rec.Name+"/"+name]
		delete(m.diskCleanups, rec.Name+"/"+name)
		m.mu.Unlock()
		if !ok {
			c.disk = driver.Disk{Path: rec.Devices[name]["path"]} // plugged by an earlier daemon
		}
		if running && hp != nil {
			if err := hp.RemoveDisk(ctx, rec.Handle, name, c.disk); err != nil {
				logctx.From(ctx).Error("unplug disk", "instance", rec.Name, "disk", name, "err", err)
			}
		}
		for _, f := range c.undo {
			if err := f(); err != nil {
				logctx.From(ctx).Warn("give volume back", "instance", rec.Name, "disk", name, "err", err)
			}
		}
	}
}

// diskCleanup is how to give back a plugged disk's volume.
type diskCleanup struct {
	disk driver.Disk
	undo []func() error
}

func (m *Manager) setDiskCleanup(instance, disk string, d driver.Disk, undo []func() error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.diskCleanups[instance+"/"+disk] = diskCleanup{disk: d, undo: undo}
}

// storeRecordView is the part of an instance record the disk code needs.
type storeRecordView struct {
	Name, Type string
	Handle     *driver.Handle
	Devices    map[string]map[string]string
}

// hotplugDisks plugs disks added to a running instance and unplugs removed ones.
func (m *Manager) hotplugDisks(ctx context.Context, drv driver.Driver, rec *store.InstanceRecord, want map[string]map[string]string) error {
	added, removed := diskNames(rec.Desired.Devices, want), diskNames(want, rec.Desired.Devices)
	if len(added) == 0 && len(removed) == 0 {
		return nil
	}
	if st, err := drv.State(ctx, rec.Handle); err != nil || st != driver.StatusRunning {
		return nil
	}
	m.unplugDisks(ctx, drv, diskView(rec, rec.Desired.Devices), removed, true)
	return m.plugDisks(ctx, drv, diskView(rec, want), added)
}

// readoptDisks takes back the volumes of an instance found running at daemon start: leases and
// mounts, which the instance kept using while the daemon was away.
func (m *Manager) readoptDisks(ctx context.Context, rec *store.InstanceRecord) {
	if m.volumes == nil {
		return
	}
	for _, name := range allDisks(rec.Desired.Devices) {
		dev := rec.Desired.Devices[name]
		pool, source := diskPool(dev), dev["source"]
		release, err := m.volumes.Acquire(ctx, pool, source, rec.Name)
		if err != nil {
			logctx.From(ctx).Error("take back volume lease", "instance", rec.Name, "disk", name, "err", err)
			continue
		}
		undo := []func() error{release}
		disk := driver.Disk{Path: dev["path"]}
		if rec.Type == api.TypeContainer {
			if _, unmount, err := m.volumes.MountVolume(ctx, pool, source); err == nil {
				undo = append([]func() error{unmount}, undo...)
			}
		}
		m.setDiskCleanup(rec.Name, name, disk, undo)
	}
}
