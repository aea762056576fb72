package instance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// ChangeState starts, stops, restarts, pauses or resumes an instance in an operation. Whether the
// change makes sense (already running, cannot pause) is checked first and answered synchronously.
func (m *Manager) ChangeState(ctx context.Context, name string, req api.InstanceStatePut) (*api.Operation, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if req.Timeout < 0 {
		return nil, errdefs.Invalid("timeout must not be negative")
	}
	stop := driver.StopOpts{Timeout: DefaultStopTimeout, Force: req.Force, Stateful: req.Stateful}
	if req.Timeout > 0 {
		stop.Timeout = time.Duration(req.Timeout) * time.Second
	}

	var want []driver.Status // statuses the instance must be in for the action
	var run func(ctx context.Context) error
	switch req.Action {
	case api.ActionStart:
		want, run = []driver.Status{driver.StatusStopped}, func(ctx context.Context) error { return m.start(ctx, name) }
	case api.ActionStop:
		want = []driver.Status{driver.StatusRunning, driver.StatusPaused}
		run = func(ctx context.Context) error { return m.stop(ctx, name, stop) }
	case api.ActionRestart:
		want = []driver.Status{driver.StatusRunning, driver.StatusPaused}
		run = func(ctx context.Context) error {
			if err := m.stop(ctx, name, stop); err != nil {
				return err
			}
			return m.start(ctx, name)
		}
	case api.ActionPause:
		want, run = []driver.Status{driver.StatusRunning}, func(ctx context.Context) error { return m.pause(ctx, name, true) }
	case api.ActionResume:
		want, run = []driver.Status{driver.StatusPaused}, func(ctx context.Context) error { return m.pause(ctx, name, false) }
	default:
		return nil, errdefs.Invalid("unknown action %q (want start, stop, restart, pause or resume)", req.Action)
	}

	check := func() error {
		rec, drv, err := m.recordAndDriver(name)
		if err != nil {
			return err
		}
		if req.Action == api.ActionPause || req.Action == api.ActionResume {
			if _, ok := drv.(driver.Pauser); !ok {
				return errdefs.Invalid("%s instances cannot be paused", rec.Type)
			}
		}
		if req.Stateful && (req.Action == api.ActionStop || req.Action == api.ActionRestart) {
			if err := canStopStateful(ctx, rec.Type, drv); err != nil {
				return err
			}
		}
		st, err := drv.State(ctx, rec.Handle)
		if err != nil {
			return fmt.Errorf("query state of %q: %w", name, err)
		}
		for _, w := range want {
			if st == w {
				return nil
			}
		}
		return errdefs.Conflict("cannot %s instance %q: it is %s", req.Action, name, apiStatus(st))
	}
	desc := fmt.Sprintf("%s instance %s", actionVerb(req.Action), name)
	return m.runLocked(name, desc, check, func(ctx context.Context, op *operations.Op) error {
		return run(ctx)
	})
}

// canStopStateful refuses a stateful stop of a driver that has no checkpoint at all, rather than
// doing a plain stop that loses the running state the caller asked to keep. A driver that has it
// elsewhere but not (or not yet) here (Info.Missing) answers for itself, with its reason.
func canStopStateful(ctx context.Context, kind string, drv driver.Driver) error {
	info := drv.Info(ctx)
	if _, missing := info.Missing[driver.CapCheckpoint]; missing || slices.Contains(info.Capabilities, driver.CapCheckpoint) {
		return nil
	}
	return errdefs.Invalid("stateful stop of %s instances is not supported by the %s driver", kind, info.Name)
}

func actionVerb(action string) string {
	switch action {
	case api.ActionStop:
		return "Stopping"
	case api.ActionRestart:
		return "Restarting"
	case api.ActionPause:
		return "Pausing"
	case api.ActionResume:
		return "Resuming"
	}
	return "Starting"
}

// start records the wish to run, then starts; on failure the wish is rolled back.
func (m *Manager) start(ctx context.Context, name string) error {
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return err
	}
	// The root disk first: if another host runs from it, this one must not.
	if err := m.holdRoot(ctx, rec); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	prev, err := m.setDesired(name, api.PowerRunning)
	if err != nil {
		m.letRootGo(name)
		return err
	}
	err = drv.Start(ctx, rec.Handle)
	m.saveHandle(context.WithoutCancel(ctx), name, drv, rec.Handle)
	if err != nil {
		m.setDesired(name, prev)
		m.letRootGo(name)
		return fmt.Errorf("start %s: %w", name, err)
	}
	// Volumes go in once it runs; an instance that cannot have its disks does not stay up without them.
	if err := m.plugDisks(ctx, drv, diskView(rec, rec.Desired.Devices), allDisks(rec.Desired.Devices)); err != nil {
		drv.Stop(context.WithoutCancel(ctx), rec.Handle, driver.StopOpts{Force: true})
		m.saveHandle(context.WithoutCancel(ctx), name, drv, rec.Handle)
		m.setDesired(name, prev)
		m.letRootGo(name)
		return fmt.Errorf("start %s: %w", name, err)
	}
	m.hub.Lifecycle("instance-started", name)
	return nil
}

func (m *Manager) stop(ctx context.Context, name string, opts driver.StopOpts) error {
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return err
	}
	prev, err := m.setDesired(name, api.PowerStopped)
	if err != nil {
		return err
	}
	err = drv.Stop(ctx, rec.Handle, opts)
	m.saveHandle(context.WithoutCancel(ctx), name, drv, rec.Handle)
	if err != nil && !errors.Is(err, driver.ErrNotRunning) {
		m.setDesired(name, prev)
		return fmt.Errorf("stop %s: %w", name, err)
	}
	m.unplugNICs(context.WithoutCancel(ctx), name, rec.Desired.Devices)
	m.unplugDisks(context.WithoutCancel(ctx), drv, diskView(rec, rec.Desired.Devices), allDisks(rec.Desired.Devices), false)
	m.letRootGo(name)
	m.hub.Lifecycle("instance-stopped", name)
	return nil
}

func (m *Manager) pause(ctx context.Context, name string, pause bool) error {
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return err
	}
	p := drv.(driver.Pauser) // checked before the operation started
	power, action, call := api.PowerPaused, "instance-paused", p.Pause
	if !pause {
		power, action, call = api.PowerRunning, "instance-resumed", p.Resume
	}
	prev, err := m.setDesired(name, power)
	if err != nil {
		return err
	}
	err = call(ctx, rec.Handle)
	m.saveHandle(context.WithoutCancel(ctx), name, drv, rec.Handle)
	if err != nil {
		m.setDesired(name, prev)
		return fmt.Errorf("%s %s: %w", action[len("instance-"):], name, err)
	}
	m.hub.Lifecycle(action, name)
	return nil
}

// Delete removes an instance in an operation. A running instance is refused unless force is set,
// in which case it is stopped hard first.
func (m *Manager) Delete(ctx context.Context, name string, force bool) (*api.Operation, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	check := func() error {
		rec, drv, err := m.recordAndDriver(name)
		if err != nil {
			return err
		}
		st, err := drv.State(ctx, rec.Handle)
		if err != nil {
			return fmt.Errorf("query state of %q: %w", name, err)
		}
		if !force && (st == driver.StatusRunning || st == driver.StatusPaused) {
			return errdefs.Conflict("instance %q is %s: stop it first or delete with --force", name, apiStatus(st))
		}
		return nil
	}
	return m.runLocked(name, "Deleting instance "+name, check, func(ctx context.Context, op *operations.Op) error {
		return m.delete(ctx, name)
	})
}

// delete marks the record as being deleted (so recovery finishes the job), stops what runs, removes
// the driver's resources, then the record.
func (m *Manager) delete(ctx context.Context, name string) error {
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return err
	}
	if _, err := m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		r.Pending = store.PendingDelete
		r.Desired.Power = api.PowerStopped
		return nil
	}); err != nil {
		return err
	}
	st, err := drv.State(ctx, rec.Handle)
	if err == nil && st != driver.StatusStopped && st != driver.StatusGone {
		if err := drv.Stop(ctx, rec.Handle, driver.StopOpts{Force: true}); err != nil && !errors.Is(err, driver.ErrNotRunning) {
			return fmt.Errorf("stop %s before delete: %w", name, err)
		}
	}
	if err := drv.Delete(ctx, rec.Handle); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	m.detachNICs(name, rec.Desired.Devices, allNICs(rec.Desired.Devices))
	m.unplugDisks(ctx, drv, diskView(rec, rec.Desired.Devices), allDisks(rec.Desired.Devices), false)
	m.detachVolumes(name, rec.Desired.Devices, allDisks(rec.Desired.Devices))
	if err := m.deleteRoot(ctx, rec); err != nil {
		return err
	}
	m.unrefImage(rec.Handle.Spec.Image, name)
	if err := m.store.DeleteInstance(name); err != nil {
		return err
	}
	m.hub.Lifecycle("instance-deleted", name)
	return nil
}
