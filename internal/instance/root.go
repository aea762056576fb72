package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/logctx"
	"tandem/internal/storage"
	"tandem/internal/store"
	"tandem/internal/units"
)

// Root disks on storage pools. An instance whose driver can have one (driver.RootSourcer) gets its
// root disk as the volume TYPE/NAME of a pool: the disk device with path "/" names the pool (the
// default one when the request has no such device) and, with size or limits.disk, its size. The
// control plane makes the volume before the driver's Create and deletes it after its Delete, and
// holds the volume's lease while the instance runs, so that no other host of a shared pool starts
// it meanwhile.

func isRootDisk(dev map[string]string) bool { return dev["type"] == "disk" && dev["path"] == "/" }

// rootDevice returns the root disk device (nil: none).
func rootDevice(devices map[string]map[string]string) map[string]string {
	for _, d := range devices {
		if isRootDisk(d) {
			return d
		}
	}
	return nil
}

// rootSize is the root disk's size asked for: its device's size or limits.disk (0: none).
func rootSize(config map[string]string, devices map[string]map[string]string) (uint64, error) {
	limit, _ := units.ParseSize(config["limits.disk"])
	var dev uint64
	if d := rootDevice(devices); d != nil && d["size"] != "" {
		dev, _ = units.ParseSize(d["size"])
	}
	if limit != 0 && dev != 0 && limit != dev {
		return 0, errdefs.Invalid("limits.disk (%s) and the root disk's size (%s) disagree: give one of them",
			config["limits.disk"], rootDevice(devices)["size"])
	}
	return max(limit, dev), nil
}

// withRoot gives a new instance a root disk device on the default pool when its driver can have
// its root on a pool and the request names none. Asking for a root where none can be made is
// refused.
func (m *Manager) withRoot(devices api.Devices, kind string, drv driver.Driver, existing bool) (api.Devices, error) {
	_, can := drv.(driver.RootSourcer)
	can = can && m.volumes != nil
	root := rootDevice(devices)
	switch {
	case (root != nil || existing) && !can:
		return nil, errdefs.Unavailable("this host cannot put the root disk of %s instances on a storage pool", kind)
	case root != nil || !can:
		return devices, nil
	}
	out := maps.Clone(devices)
	if out == nil {
		out = api.Devices{}
	}
	name := "root"
	for i := 0; out[name] != nil; i++ {
		name = fmt.Sprintf("root%d", i)
	}
	out[name] = map[string]string{"type": "disk", "path": "/", "pool": defaultPool}
	return out, nil
}

// checkNewRoot answers at once what would fail the create of a root: an instance of that name, an
// unknown pool, a root volume of that name already there (another host's instance on a shared
// pool) or, to adopt one, not there.
func (m *Manager) checkNewRoot(ctx context.Context, name, kind string, devices map[string]map[string]string, existing bool) error {
	// An instance of that name here owns that root: say so, rather than talk of its volume.
	if _, err := m.store.GetInstance(name); err == nil {
		return errdefs.Exists("instance %q already exists", name)
	}
	dev := rootDevice(devices)
	if dev == nil {
		return nil
	}
	pool := diskPool(dev)
	if _, err := m.volumes.GetPool(ctx, pool); err != nil {
		return err
	}
	info, err := m.volumes.InstanceRoot(ctx, pool, name, kind)
	switch {
	case existing && err != nil:
		return fmt.Errorf("existing root: %w", err)
	case existing:
		// Never a second copy on a root a live process of this host runs from (a guest whose
		// record was lost): refused before anything is reserved, its address included.
		if hs, herr := fsutil.Holders(info.Path); herr == nil && len(hs) > 0 {
			return errdefs.Conflict("the root volume %s/%s on pool %q is in use on this host (%s): is an instance whose record tandemd lost still running? `tandem host orphans` lists them",
				kind, name, pool, fsutil.DescribeHolders(hs))
		}
	case !existing && err == nil:
		return errdefs.Exists("storage pool %q already holds a root volume %s/%s (another host's instance on a shared pool? "+
			"take it with --existing-root)", pool, kind, name)
	case !existing && !errors.Is(err, errdefs.ErrNotFound):
		return err
	}
	return nil
}

// How makeRoot gets an instance's root.
type rootWay int

const (
	newRoot      rootWay = iota // made from the image
	existingRoot                // adopted (--existing-root): refused while a live process holds it
	incomingRoot                // adopted by a live move's destination: the source holds it
)

// makeRoot makes the root volume of a new instance (or adopts an existing one) and puts it in the
// record's spec for the driver.
func (m *Manager) makeRoot(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver, way rootWay) error {
	dev := rootDevice(rec.Desired.Devices)
	if dev == nil {
		return nil
	}
	pool := diskPool(dev)
	if way != newRoot {
		if _, err := m.volumes.AdoptInstanceRoot(ctx, pool, rec.Name, rec.Type, way == incomingRoot); err != nil {
			return err
		}
	} else {
		src, err := drv.(driver.RootSourcer).RootSource(ctx, rec.Handle.Spec.Image)
		if err != nil {
			return err
		}
		size, _ := rootSize(rec.Desired.Config, rec.Desired.Devices)
		if _, err := m.volumes.CreateInstanceRoot(ctx, pool, rec.Name, rec.Type, imageSource(src), size); err != nil {
			return err
		}
	}
	root, err := m.rootDisk(ctx, pool, rec.Name, rec.Type)
	if err != nil {
		return err
	}
	rec.Handle.Spec.Root = root
	return nil
}

// deleteRoot deletes an instance's root volume (kept while another host's instance has adopted it).
func (m *Manager) deleteRoot(ctx context.Context, rec *store.InstanceRecord) error {
	dev := rootDevice(rec.Desired.Devices)
	if dev == nil || m.volumes == nil {
		return nil
	}
	m.letRootGo(rec.Name)
	if err := m.volumes.DeleteInstanceRoot(ctx, diskPool(dev), rec.Name, rec.Type); err != nil {
		return fmt.Errorf("delete the root disk of %s: %w", rec.Name, err)
	}
	return nil
}

func imageSource(src driver.RootSource) storage.ImageSource {
	is := storage.ImageSource{Fingerprint: src.Fingerprint, RootfsDir: src.Dir}
	if src.Disk != nil {
		is.Prepare = func(ctx context.Context, s *storage.ImageSource) (func(), error) {
			path, format, done, err := src.Disk(ctx)
			s.BaseDisk, s.BaseFormat = path, format
			return done, err
		}
	}
	return is
}

// rootDisk describes an instance's root for its driver, with this host's path to it.
func (m *Manager) rootDisk(ctx context.Context, pool, name, kind string) (*driver.RootDisk, error) {
	info, err := m.volumes.InstanceRoot(ctx, pool, name, kind)
	if err != nil {
		return nil, err
	}
	format := map[string]string{storage.FormatDir: driver.RootDir, storage.FormatSubvol: driver.RootBtrfs,
		storage.FormatExt4: driver.RootExt4, storage.FormatQcow2: driver.RootQcow2}[info.Format]
	if format == "" {
		return nil, fmt.Errorf("root volume %s/%s has format %q, which no driver takes", kind, name, info.Format)
	}
	return &driver.RootDisk{Path: info.Path, Format: format, Pool: pool, Volume: kind + "/" + name, Shared: info.Shared}, nil
}

// RootDisk says where an instance's root disk is (nil, nil: its driver keeps it): the pool and
// volume, whether the pool is shared with other hosts, and this host's path to it.
func (m *Manager) RootDisk(ctx context.Context, name string) (*driver.RootDisk, error) {
	rec, err := m.store.GetInstance(name)
	if err != nil {
		return nil, err
	}
	if rec.Handle == nil || rec.Handle.Spec.Root == nil || m.volumes == nil {
		return nil, nil
	}
	return m.rootDisk(ctx, rec.Handle.Spec.Root.Pool, rec.Name, rec.Type)
}

// holdRoot takes the lease on an instance's root disk until letRootGo (holding it already is
// fine) and refreshes this host's path to it in the handle. Another host using the disk refuses.
func (m *Manager) holdRoot(ctx context.Context, rec *store.InstanceRecord) error {
	if rec.Handle == nil || rec.Handle.Spec.Root == nil || m.volumes == nil {
		return nil
	}
	r := rec.Handle.Spec.Root
	fresh, err := m.rootDisk(ctx, r.Pool, rec.Name, rec.Type)
	if err != nil {
		return fmt.Errorf("root disk: %w", err)
	}
	rec.Handle.Spec.Root = fresh
	m.mu.Lock()
	_, held := m.rootLeases[rec.Name]
	m.mu.Unlock()
	if held {
		return nil
	}
	release, err := m.volumes.Acquire(ctx, r.Pool, r.Volume, rec.Name)
	if err != nil {
		return fmt.Errorf("root disk: %w", err)
	}
	m.mu.Lock()
	m.rootLeases[rec.Name] = release
	m.mu.Unlock()
	return nil
}

// letRootGo gives back the lease holdRoot took.
func (m *Manager) letRootGo(name string) {
	m.mu.Lock()
	release := m.rootLeases[name]
	delete(m.rootLeases, name)
	m.mu.Unlock()
	if release != nil {
		if err := release(); err != nil {
			slog.Warn("give back the root disk's lease", "instance", name, "err", err)
		}
	}
}

// letIdleRootGo gives back the lease of an instance found stopped (it shut itself down), unless an
// operation holds the instance: what the driver still has of the disk (a container's mount) is
// cleaned up first, then the disk is free for another host.
func (m *Manager) letIdleRootGo(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver) {
	m.mu.Lock()
	_, held := m.rootLeases[rec.Name]
	m.mu.Unlock()
	if !held || m.lock(rec.Name, "release-root") != nil {
		return
	}
	defer m.unlock(rec.Name)
	if err := drv.Stop(ctx, rec.Handle, driver.StopOpts{Force: true}); err != nil && !errors.Is(err, driver.ErrNotRunning) {
		logctx.From(ctx).Warn("clean up after an instance that stopped by itself", "instance", rec.Name, "err", err)
		return
	}
	m.letRootGo(rec.Name)
}

// resizeRoot grows a stopped instance's root disk to a changed limits.disk (or root size). The
// disk never shrinks; the pool of a root disk does not change.
func (m *Manager) resizeRoot(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver, config map[string]string, devices map[string]map[string]string) error {
	oldDev, newDev := rootDevice(rec.Desired.Devices), rootDevice(devices)
	if rec.Handle.Spec.Root == nil || oldDev == nil {
		if newDev != nil {
			return errdefs.Invalid("instance %q keeps its root disk with its driver: a root disk device cannot be added", rec.Name)
		}
		return nil
	}
	r := rec.Handle.Spec.Root
	switch {
	case newDev == nil:
		return errdefs.Invalid("the root disk device of %q cannot be removed", rec.Name)
	case diskPool(newDev) != diskPool(oldDev):
		return errdefs.Invalid("the root disk of %q is on pool %q: moving it to %q is not supported", rec.Name, diskPool(oldDev), diskPool(newDev))
	}
	want, _ := rootSize(config, devices)
	have, _ := rootSize(rec.Desired.Config, rec.Desired.Devices)
	if want == have {
		return nil
	}
	if want == 0 {
		return errdefs.Invalid("the disk limit of %q cannot be removed: its root disk keeps its size (set a larger one to grow it)", rec.Name)
	}
	info, err := m.volumes.InstanceRoot(ctx, r.Pool, rec.Name, rec.Type)
	if err != nil {
		return err
	}
	if want < info.Size {
		return errdefs.Invalid("the root disk of %q is %s: it can grow but not shrink (asked for %s)", rec.Name,
			units.FormatSize(info.Size), units.FormatSize(want))
	}
	if st, err := drv.State(ctx, rec.Handle); err != nil {
		return err
	} else if st == driver.StatusRunning || st == driver.StatusPaused {
		return errdefs.Conflict("instance %q is %s: stop it to change its disk size", rec.Name, apiStatus(st))
	}
	if want == info.Size {
		return nil
	}
	return m.volumes.ResizeVolume(ctx, r.Pool, r.Volume, want)
}
