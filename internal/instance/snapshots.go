package instance

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
	"tandem/internal/operations"
	"tandem/internal/storage"
	"tandem/internal/store"
)

// Instance snapshots are snapshots of the root disk's volume (a btrfs snapshot, or a reflinked or
// plain copy of the tree or image file), plus, for a stateful one, the memory the driver saved
// (driver.StateSnapshotter). A running instance is paused while its disk is copied, so the copy
// is one instant of it. A restore stops a running instance, restores the disk and starts it again,
// as Incus does; a stateful snapshot's restore always starts it, resuming the saved state.

// snapshotTarget loads an instance whose root disk is on a pool.
func (m *Manager) snapshotTarget(name string) (*store.InstanceRecord, driver.Driver, *driver.RootDisk, error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, nil, err
	}
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return nil, nil, nil, err
	}
	if rec.Handle.Spec.Root == nil || m.volumes == nil {
		return nil, nil, nil, errdefs.Invalid("instance %q keeps its root disk with its driver, not on a storage pool: it has no snapshots", name)
	}
	return rec, drv, rec.Handle.Spec.Root, nil
}

// stateSnapshots lists the snapshots whose memory the driver keeps.
func stateSnapshots(ctx context.Context, drv driver.Driver, h *driver.Handle) []string {
	ss, ok := drv.(driver.StateSnapshotter)
	if !ok {
		return nil
	}
	names, err := ss.StateSnapshots(ctx, h)
	if err != nil {
		logctx.From(ctx).Warn("list stateful snapshots", "instance", h.Spec.Name, "err", err)
	}
	return names
}

// Snapshots lists an instance's snapshots, oldest first.
func (m *Manager) Snapshots(ctx context.Context, name string) ([]api.InstanceSnapshot, error) {
	rec, drv, r, err := m.snapshotTarget(name)
	if err != nil {
		return nil, err
	}
	vol, err := m.volumes.GetVolume(ctx, r.Pool, r.Volume)
	if err != nil {
		return nil, err
	}
	stateful := stateSnapshots(ctx, drv, rec.Handle)
	out := []api.InstanceSnapshot{}
	for _, s := range vol.Snapshots {
		out = append(out, api.InstanceSnapshot{Name: s.Name, CreatedAt: s.CreatedAt, Size: s.Size,
			Stateful: slices.Contains(stateful, s.Name)})
	}
	return out, nil
}

// hasSnapshot answers whether the root volume has the snapshot.
func (m *Manager) hasSnapshot(ctx context.Context, r *driver.RootDisk, snap string) (bool, error) {
	vol, err := m.volumes.GetVolume(ctx, r.Pool, r.Volume)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(vol.Snapshots, func(s storage.Snapshot) bool { return s.Name == snap }), nil
}

// checkSnapshot refuses a snapshot the instance does not have.
func (m *Manager) checkSnapshot(ctx context.Context, name, snap string) error {
	_, _, r, err := m.snapshotTarget(name)
	if err != nil {
		return err
	}
	if has, err := m.hasSnapshot(ctx, r, snap); err != nil || !has {
		if err != nil {
			return err
		}
		return errdefs.NotFound("instance %q has no snapshot %q", name, snap)
	}
	return nil
}

// CreateSnapshot snapshots an instance in an operation.
func (m *Manager) CreateSnapshot(ctx context.Context, name string, req api.InstanceSnapshotsPost) (*api.Operation, error) {
	if err := storage.ValidateVolumeName("snapshot", req.Name); err != nil {
		return nil, err
	}
	check := func() error {
		rec, drv, r, err := m.snapshotTarget(name)
		if err != nil {
			return err
		}
		if has, err := m.hasSnapshot(ctx, r, req.Name); err != nil || has {
			if err != nil {
				return err
			}
			return errdefs.Exists("instance %q already has a snapshot %q", name, req.Name)
		}
		if !req.Stateful {
			return nil
		}
		if _, ok := drv.(driver.StateSnapshotter); !ok {
			return errdefs.Invalid("%s instances cannot keep their running state in a snapshot", rec.Type)
		}
		if st, err := drv.State(ctx, rec.Handle); err != nil || st != driver.StatusRunning && st != driver.StatusPaused {
			if err != nil {
				return err
			}
			return errdefs.Conflict("instance %q is %s: a stateful snapshot needs it running", name, apiStatus(st))
		}
		return nil
	}
	return m.runLocked(name, fmt.Sprintf("Snapshotting instance %s as %s", name, req.Name), check,
		func(ctx context.Context, _ *operations.Op) error { return m.snapshot(ctx, name, req) })
}

func (m *Manager) snapshot(ctx context.Context, name string, req api.InstanceSnapshotsPost) error {
	rec, drv, r, err := m.snapshotTarget(name)
	if err != nil {
		return err
	}
	h := rec.Handle
	st, err := drv.State(ctx, h)
	if err != nil {
		return err
	}
	if st == driver.StatusRunning || st == driver.StatusPaused {
		if p, ok := drv.(driver.Pauser); ok && st == driver.StatusRunning {
			// Recorded first: if the daemon dies before the resume, recovery knows the pause is ours.
			if err := m.setPausedBy(name, store.PausedBySnapshot); err != nil {
				return err
			}
			if err := p.Pause(ctx, h); err != nil {
				m.setPausedBy(name, "")
				return fmt.Errorf("pause %s for its snapshot: %w", name, err)
			}
			defer func() {
				if err := p.Resume(context.WithoutCancel(ctx), h); err != nil {
					logctx.From(ctx).Error("resume after a snapshot", "instance", name, "err", err)
					return // the mark stays: the next recovery tries again
				}
				m.setPausedBy(name, "")
			}()
		}
		if s, ok := drv.(driver.RootSyncer); ok {
			if err := s.SyncRoot(ctx, h); err != nil {
				return fmt.Errorf("flush the root disk of %s: %w", name, err)
			}
		}
	}
	if err := m.volumes.SnapshotVolume(ctx, r.Pool, r.Volume, req.Name); err != nil {
		return err
	}
	if req.Stateful {
		if err := drv.(driver.StateSnapshotter).SnapshotState(ctx, h, req.Name); err != nil {
			if derr := m.volumes.DeleteSnapshot(context.WithoutCancel(ctx), r.Pool, r.Volume, req.Name); derr != nil {
				logctx.From(ctx).Error("drop the disk snapshot of a failed stateful snapshot", "instance", name, "err", derr)
			}
			return fmt.Errorf("save the running state of %s: %w", name, err)
		}
	}
	m.hub.Lifecycle("instance-snapshot-created", name)
	return nil
}

// RestoreSnapshot brings an instance back to a snapshot in an operation.
func (m *Manager) RestoreSnapshot(ctx context.Context, name, snap string) (*api.Operation, error) {
	check := func() error { return m.checkSnapshot(ctx, name, snap) }
	return m.runLocked(name, fmt.Sprintf("Restoring instance %s to %s", name, snap), check,
		func(ctx context.Context, _ *operations.Op) error { return m.restore(ctx, name, snap) })
}

func (m *Manager) restore(ctx context.Context, name, snap string) error {
	rec, drv, r, err := m.snapshotTarget(name)
	if err != nil {
		return err
	}
	st, err := drv.State(ctx, rec.Handle)
	if err != nil {
		return err
	}
	running := st == driver.StatusRunning || st == driver.StatusPaused
	if running {
		if err := m.stop(ctx, name, driver.StopOpts{Force: true}); err != nil {
			return err
		}
	}
	// Storage refuses a disk in use; while it is restored, it refuses to lend it out.
	err = m.volumes.RestoreVolume(ctx, r.Pool, r.Volume, snap)
	stateful := slices.Contains(stateSnapshots(ctx, drv, rec.Handle), snap)
	if err == nil {
		err = m.pickState(ctx, name, drv, snap, stateful)
	}
	if err != nil {
		if running { // the disk is as it was (a restore that fails is rolled back): run on
			err = errors.Join(err, m.start(context.WithoutCancel(ctx), name))
		}
		return fmt.Errorf("restore %s to %s: %w", name, snap, err)
	}
	m.hub.Lifecycle("instance-restored", name)
	if running || stateful {
		return m.start(ctx, name)
	}
	return nil
}

// pickState makes the next start resume snap's saved memory, or boot afresh (a stateful stop's
// memory does not belong to the restored disk).
func (m *Manager) pickState(ctx context.Context, name string, drv driver.Driver, snap string, stateful bool) error {
	ss, ok := drv.(driver.StateSnapshotter)
	if !ok {
		return nil
	}
	rec, err := m.store.GetInstance(name)
	if err != nil {
		return err
	}
	if !stateful {
		snap = ""
	}
	if err := ss.RestoreState(ctx, rec.Handle, snap); err != nil {
		return err
	}
	m.saveHandle(ctx, name, drv, rec.Handle)
	return nil
}

// DeleteSnapshot removes an instance's snapshot in an operation.
func (m *Manager) DeleteSnapshot(ctx context.Context, name, snap string) (*api.Operation, error) {
	check := func() error { return m.checkSnapshot(ctx, name, snap) }
	return m.runLocked(name, fmt.Sprintf("Deleting snapshot %s of instance %s", snap, name), check,
		func(ctx context.Context, _ *operations.Op) error {
			rec, drv, r, err := m.snapshotTarget(name)
			if err != nil {
				return err
			}
			if err := m.volumes.DeleteSnapshot(ctx, r.Pool, r.Volume, snap); err != nil {
				return err
			}
			if slices.Contains(stateSnapshots(ctx, drv, rec.Handle), snap) {
				return drv.(driver.StateSnapshotter).DeleteStateSnapshot(ctx, rec.Handle, snap)
			}
			return nil
		})
}
