package container

import (
	"context"
	"errors"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/rootfs"
	"tandem/internal/errdefs"
)

// Pause freezes every process of the container (cgroup freezer, through runc).
func (d *Driver) Pause(ctx context.Context, h *driver.Handle) error {
	if err := d.wantStatus(ctx, h, driver.StatusRunning); err != nil {
		return err
	}
	return d.runc.Pause(ctx, h.ID)
}

// Resume thaws a paused container.
func (d *Driver) Resume(ctx context.Context, h *driver.Handle) error {
	if err := d.wantStatus(ctx, h, driver.StatusPaused); err != nil {
		return err
	}
	return d.runc.Resume(ctx, h.ID)
}

func (d *Driver) wantStatus(ctx context.Context, h *driver.Handle, want driver.Status) error {
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	if status == driver.StatusGone {
		return errdefs.NotFound("container %s does not exist", h.ID)
	}
	if status == driver.StatusStopped {
		return driver.ErrNotRunning
	}
	if status != want {
		return errdefs.Conflict("container %s is %s", h.ID, status)
	}
	return nil
}

// Update applies a changed spec. Limits change live (`runc update`) on a running or paused
// container and are written to config.json for the next start; environment and nesting apply at
// the next start. security.privileged changes only on a stopped container, by re-owning its
// rootfs into (or out of) an id range.
func (d *Driver) Update(ctx context.Context, h *driver.Handle, spec *driver.Spec) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	live, err := resources(spec.Config, true, onlineCPUs())
	if err != nil {
		return err
	}
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	running := status == driver.StatusRunning || status == driver.StatusPaused
	wantPriv := spec.Config["security.privileged"] == "true"
	if wantPriv != st.IDs.Identity() {
		if running {
			return errdefs.Conflict("security.privileged of container %s can only change while it is stopped", h.ID)
		}
		if st.Checkpoint {
			return errdefs.Conflict("container %s has a checkpoint taken with the old id mapping: start it or discard the checkpoint first", h.ID)
		}
		if err := d.reshift(ctx, h, st, wantPriv); err != nil {
			return err
		}
	}
	if running {
		if err := d.runc.Update(ctx, h.ID, live); err != nil {
			return err
		}
	}
	lx := ""
	if running {
		lx = d.lxcfsDir(ctx)
	}
	if err := d.writeConfig(spec, st, lx); err != nil {
		return err
	}
	h.Spec = *spec
	return d.save(h, st)
}

// reshift moves a stopped container's rootfs to a new id range (or to host ids).
func (d *Driver) reshift(ctx context.Context, h *driver.Handle, st *instState, privileged bool) error {
	to := rootfs.IDMap{}
	if !privileged {
		r, err := d.ids.Allocate(h.ID)
		if err != nil {
			return err
		}
		to = rootfs.IDMap{Base: r.Base, Size: r.Size}
	}
	dir, done, err := d.mountedRoot(ctx, h)
	if err != nil {
		return err
	}
	err = rootfs.Reshift(ctx, dir, st.IDs, to)
	if derr := done(); err == nil {
		err = derr
	}
	if err != nil {
		return err
	}
	st.IDs = to
	if privileged {
		if err := d.ids.Release(h.ID); err != nil {
			return err
		}
	}
	return d.save(h, st)
}

// Stats reads the container's cgroup: CPU time, memory in use (page cache included, as the
// cgroup counts it) and the number of tasks.
func (d *Driver) Stats(ctx context.Context, h *driver.Handle) (driver.Stats, error) {
	if err := d.wantStatus(ctx, h, driver.StatusRunning); err != nil && !errors.Is(err, errdefs.ErrConflict) {
		return driver.Stats{}, err
	}
	s, err := d.runc.Stats(ctx, h.ID)
	if err != nil {
		return driver.Stats{}, err
	}
	return driver.Stats{
		CPUTime:     time.Duration(s.CPU.Usage.Total),
		MemoryBytes: s.Memory.Usage.Usage,
		Processes:   int(s.Pids.Current),
	}, nil
}
