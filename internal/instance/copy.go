package instance

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/google/uuid"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// Copy makes req.Name here, a stopped instance with src's image, configuration, devices and
// root contents, and its own MACs and addresses. The root volume is copied by the pool (an
// instant snapshot within a btrfs pool) and the new instance is created on it. Snapshots are
// not copied. A copy to a remote is the migration engine's.
func (m *Manager) Copy(ctx context.Context, src string, req api.InstanceCopyPost) (*api.Operation, error) {
	if err := ValidateName(src); err != nil {
		return nil, err
	}
	if err := ValidateName(req.Name); err != nil {
		return nil, err
	}
	if req.Target != "" {
		return nil, errdefs.Invalid("a copy to remote %q is the migration engine's", req.Target)
	}
	if req.Name == src {
		return nil, errdefs.Invalid("a copy needs a new name")
	}
	rec, drv, err := m.recordAndDriver(src)
	if err != nil {
		return nil, err
	}
	srcRoot := rootDevice(rec.Desired.Devices)
	if srcRoot == nil || m.volumes == nil {
		return nil, errdefs.Unavailable("instance %q has no root volume on a storage pool: it cannot be copied on this host", src)
	}
	devices := DevicesForCopy(rec.Desired.Devices)
	if req.Storage != "" {
		for name, dev := range devices {
			if isRootDisk(dev) {
				dev = maps.Clone(dev)
				dev["pool"] = req.Storage
				devices[name] = dev
			}
		}
	}
	spec := driver.Spec{ID: uuid.NewString(), Name: req.Name, Type: rec.Type, Image: rec.Handle.Spec.Image,
		Config: maps.Clone(rec.Desired.Config), Devices: devices}
	copyRec := &store.InstanceRecord{
		Name: req.Name, Type: rec.Type, Image: rec.Image, CreatedAt: time.Now().UTC(),
		Desired:  store.DesiredState{Power: api.PowerStopped, Config: spec.Config, Devices: spec.Devices},
		Observed: store.ObservedState{Status: api.StatusUnknown},
		Handle:   &driver.Handle{ID: spec.ID, Driver: rec.Handle.Driver, Spec: spec},
		Pending:  store.PendingCreate,
	}
	// src is held for the whole copy, so that it neither starts nor goes meanwhile.
	releaseSrc, err := m.Hold(src, "copy to "+req.Name)
	if err != nil {
		return nil, err
	}
	check := func() error {
		if rec, err = m.store.GetInstance(src); err != nil { // as it is now that it is held
			return err
		}
		if err := m.CheckCopyable(ctx, rec, drv); err != nil {
			return err
		}
		if err := m.checkNewRoot(ctx, req.Name, rec.Type, devices, false); err != nil {
			return err
		}
		if err := m.store.CreateInstance(copyRec); err != nil {
			return err
		}
		if m.images != nil {
			if err := m.images.Ref(spec.Image, imageUser(req.Name)); err != nil {
				m.store.DeleteInstance(req.Name)
				return err
			}
		}
		return nil
	}
	op, err := m.runLocked(req.Name, fmt.Sprintf("Copying instance %s to %s", src, req.Name), check,
		func(ctx context.Context, op *operations.Op) error {
			defer releaseSrc()
			srcPool, dstPool := diskPool(srcRoot), diskPool(rootDevice(devices))
			if _, err := m.volumes.CopyVolume(ctx, srcPool, rec.Type+"/"+src, dstPool, rec.Type+"/"+req.Name); err != nil {
				m.unrefImage(spec.Image, req.Name)
				m.store.DeleteInstance(req.Name)
				return err
			}
			if err := m.createInDriver(ctx, copyRec, drv, true); err != nil { // rolls back the copied root too
				return err
			}
			m.hub.Lifecycle("instance-created", req.Name)
			return nil
		})
	if op == nil { // refused (the new name busy, or check failed): the operation never ran
		releaseSrc()
	}
	return op, err
}

// CheckCopyable refuses to copy an instance that is busy or not stopped (its root would change
// under the copy), or that has volumes attached (they are not part of it).
func (m *Manager) CheckCopyable(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver) error {
	if rec.Pending != "" {
		return errdefs.Conflict("instance %q is %s", rec.Name, rec.Pending)
	}
	status, err := m.Status(ctx, rec, drv)
	if err != nil {
		return err
	}
	if status != api.StatusStopped {
		return errdefs.Conflict("instance %q is %s: stop it before copying it", rec.Name, status)
	}
	return CheckNoVolumes(rec)
}

// CheckNoVolumes refuses an instance with custom volumes attached (a move or copy leaves them).
func CheckNoVolumes(rec *store.InstanceRecord) error {
	for dev, d := range rec.Desired.Devices {
		if isDisk(d) {
			return errdefs.Conflict("instance %q has volume %s attached (device %s): detach it first", rec.Name, d["source"], dev)
		}
	}
	return nil
}
