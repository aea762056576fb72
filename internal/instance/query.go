package instance

import (
	"context"
	"fmt"
	"maps"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/store"
)

// Get returns one instance with its live status.
func (m *Manager) Get(ctx context.Context, name string) (*api.Instance, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	rec, err := m.store.GetInstance(name)
	if err != nil {
		return nil, err
	}
	inst := m.view(ctx, rec)
	if inst.Status == api.StatusRunning {
		inst.Guest = m.guestInfo(ctx, rec)
	}
	return inst, nil
}

// guestInfoTimeout bounds the question to a guest agent: a booting guest must not stall a GET.
const guestInfoTimeout = 2 * time.Second

// guestInfo asks the instance's guest agent about itself, if its driver has one.
func (m *Manager) guestInfo(ctx context.Context, rec *store.InstanceRecord) *api.GuestInfo {
	drv, err := m.drivers.ByName(rec.Handle.Driver)
	if err != nil {
		return nil
	}
	gi, ok := drv.(driver.GuestInfoer)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, guestInfoTimeout)
	defer cancel()
	info, err := gi.GuestInfo(ctx, rec.Handle)
	if err != nil {
		return nil
	}
	return &api.GuestInfo{Hostname: info.Hostname, OS: info.OS, Kernel: info.Kernel, IPs: info.IPs}
}

// List returns every instance with its live status, sorted by name.
func (m *Manager) List(ctx context.Context) ([]*api.Instance, error) {
	recs, err := m.store.ListInstances()
	if err != nil {
		return nil, err
	}
	out := make([]*api.Instance, 0, len(recs))
	for _, rec := range recs {
		out = append(out, m.view(ctx, rec))
	}
	return out, nil
}

// view turns a record into the API object, asking the driver for the status now.
func (m *Manager) view(ctx context.Context, rec *store.InstanceRecord) *api.Instance {
	inst := &api.Instance{
		Name: rec.Name, Type: rec.Type, Image: rec.Image, CreatedAt: rec.CreatedAt,
		Config: rec.Desired.Config, Devices: rec.Desired.Devices, DesiredPower: rec.Desired.Power,
		Status: rec.Observed.Status, StatusError: rec.Observed.Error, Operation: m.holder(rec.Name),
	}
	if rec.Handle != nil {
		inst.Driver = rec.Handle.Driver
		inst.ImageFingerprint = rec.Handle.Spec.Image
		if r := rec.Handle.Spec.Root; r != nil {
			inst.Root = &api.InstanceRoot{Pool: r.Pool, Volume: r.Volume, Shared: r.Shared}
		}
	}
	inst.NICs = m.nicViews(ctx, rec.Name, rec.Desired.Devices)
	switch {
	case rec.Pending == store.PendingCreate:
		inst.Status = "Creating"
		return inst
	case rec.Pending == store.PendingDelete:
		inst.Status = "Deleting"
		return inst
	}
	drv, err := m.drivers.ByName(inst.Driver)
	if err != nil {
		inst.Status, inst.StatusError = api.StatusError, err.Error()
		return inst
	}
	qctx, cancel := context.WithTimeout(ctx, stateQueryTimeout)
	defer cancel()
	st, err := drv.State(qctx, rec.Handle)
	switch {
	case err != nil:
		inst.Status, inst.StatusError = api.StatusError, err.Error()
	case st == driver.StatusGone:
		inst.Status, inst.StatusError = api.StatusError, "the driver has no trace of this instance"
	default:
		inst.Status, inst.StatusError = apiStatus(st), ""
	}
	if r, ok := drv.(driver.StatusReasoner); ok && st == driver.StatusPaused {
		// Paused by the hypervisor, not the user (a full pool): say why.
		if reason, err := r.StatusReason(qctx, rec.Handle); err == nil {
			inst.StatusError = reason
		}
	}
	if st == driver.StatusStopped {
		m.letIdleRootGo(qctx, rec, drv) // it shut itself down: its disk is free for other hosts
	}
	return inst
}

// Update replaces the config and devices of an instance (PUT).
func (m *Manager) Update(ctx context.Context, name string, put api.InstancePut) (*api.Instance, error) {
	return m.updateSpec(ctx, name, func(config map[string]string, devices map[string]map[string]string) (map[string]string, map[string]map[string]string) {
		return nonNil(put.Config), nonNilDevices(put.Devices)
	})
}

// Patch merges config and device changes into an instance (PATCH): null removes.
func (m *Manager) Patch(ctx context.Context, name string, patch api.InstancePatch) (*api.Instance, error) {
	return m.updateSpec(ctx, name, func(config map[string]string, devices map[string]map[string]string) (map[string]string, map[string]map[string]string) {
		for k, v := range patch.Config {
			if v == nil {
				delete(config, k)
			} else {
				config[k] = *v
			}
		}
		for k, d := range patch.Devices {
			if d == nil {
				delete(devices, k)
			} else {
				devices[k] = d
			}
		}
		return config, devices
	})
}

// specChange turns the current config and devices (copies) into the wanted ones.
type specChange func(config map[string]string, devices map[string]map[string]string) (map[string]string, map[string]map[string]string)

// updateSpec applies a config/device change under the instance lock: validated first, handed to the
// driver if it can apply changes live, and stored only if all of that worked.
func (m *Manager) updateSpec(ctx context.Context, name string, change specChange) (*api.Instance, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := m.lock(name, "update"); err != nil {
		return nil, err
	}
	rec, err := m.applySpec(ctx, name, change)
	m.unlock(name)
	if err != nil {
		return nil, err
	}
	m.hub.Lifecycle("instance-updated", name)
	return m.view(ctx, rec), nil
}

func (m *Manager) applySpec(ctx context.Context, name string, change specChange) (*store.InstanceRecord, error) {
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return nil, err
	}
	if rec.Pending != "" {
		return nil, errdefs.Conflict("instance %q is %s", name, rec.Pending)
	}
	config, devices := change(maps.Clone(rec.Desired.Config), cloneDevices(rec.Desired.Devices))
	if err := m.validateSpec(config, devices); err != nil {
		return nil, err
	}
	// A bigger disk first: it needs nothing undone if a later step fails (it only grows).
	if err := m.resizeRoot(ctx, rec, drv, config, devices); err != nil {
		return nil, err
	}
	// New NICs get their addresses and new disks their volumes before the driver plugs them;
	// removed ones are released after.
	if err := m.attachNICs(ctx, name, rec.Desired.Devices, devices); err != nil {
		return nil, err
	}
	if err := m.attachVolumes(ctx, name, rec.Type, rec.Desired.Devices, devices); err != nil {
		m.detachNICs(name, devices, removedNICs(devices, rec.Desired.Devices))
		return nil, err
	}
	// Any failure from here on gives back what was just reserved for new devices.
	releaseAdded := func() {
		m.detachNICs(name, devices, removedNICs(devices, rec.Desired.Devices))
		m.detachVolumes(name, devices, diskNames(rec.Desired.Devices, devices))
	}
	spec := rec.Handle.Spec
	spec.Config, spec.Devices = config, devices
	if u, ok := drv.(driver.Updater); ok {
		if err := u.Update(ctx, rec.Handle, &spec); err != nil {
			releaseAdded()
			return nil, fmt.Errorf("apply change to %s: %w", name, err)
		}
	}
	if err := m.hotplugNICs(ctx, drv, rec, devices); err != nil {
		releaseAdded()
		return nil, err
	}
	if err := m.hotplugDisks(ctx, drv, rec, devices); err != nil {
		releaseAdded()
		return nil, err
	}
	m.detachNICs(name, rec.Desired.Devices, removedNICs(rec.Desired.Devices, devices))
	m.detachVolumes(name, rec.Desired.Devices, diskNames(devices, rec.Desired.Devices))
	rec.Handle.Spec = spec
	return m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		r.Desired.Config, r.Desired.Devices = config, devices
		r.Handle = rec.Handle
		return nil
	})
}

func cloneDevices(d map[string]map[string]string) map[string]map[string]string {
	out := make(map[string]map[string]string, len(d))
	for k, v := range d {
		out[k] = maps.Clone(v)
	}
	return out
}

// Allocated sums the limits of all instances, and counts those running.
func (m *Manager) Allocated(ctx context.Context) (api.HostAllocated, error) {
	list, err := m.List(ctx)
	if err != nil {
		return api.HostAllocated{}, err
	}
	var a api.HostAllocated
	for _, inst := range list {
		l := ParseLimits(inst.Config)
		a.Instances++
		if inst.Status == api.StatusRunning || inst.Status == api.StatusPaused {
			a.Running++
		}
		a.CPU += l.CPU
		a.Memory += l.Memory
		a.Disk += l.Disk
	}
	return a, nil
}
