package instance

import (
	"context"
	"log/slog"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// Recover runs once at daemon start, before the API serves: it finishes or undoes multi-step changes
// the last daemon was killed in, re-attaches every instance through its driver, and brings observed
// state in line with desired state. An instance that runs is left alone; one that should run and
// does not is started.
func (m *Manager) Recover(ctx context.Context) error {
	recs, err := m.store.ListInstances()
	if err != nil {
		return err
	}
	for _, rec := range recs {
		log := slog.With("instance", rec.Name)
		drv, err := m.drivers.ByName(handleDriver(rec))
		if err != nil {
			log.Error("instance's driver is not available; leaving it alone", "err", err)
			m.observe(rec.Name, api.StatusError, err.Error())
			continue
		}
		if m.recoverMigration(ctx, rec) {
			continue
		}
		switch rec.Pending {
		case store.PendingCreate:
			log.Warn("rolling back a create that was interrupted")
			m.rollbackCreate(rec, drv)
			continue
		case store.PendingDelete:
			log.Warn("finishing a delete that was interrupted")
			if err := m.delete(ctx, rec.Name); err != nil {
				log.Error("finish interrupted delete", "err", err)
			}
			continue
		}
		m.recoverOne(ctx, rec, drv, log)
	}
	// Interrupted creates and deletes are settled above; what is left is the truth for volumes.
	if recs, err = m.store.ListInstances(); err != nil {
		return err
	}
	m.reconcileAttachments(ctx, recs)
	m.reportOrphans(ctx)
	return nil
}

func (m *Manager) recoverOne(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver, log *slog.Logger) {
	if err := drv.Recover(ctx, rec.Handle); err != nil {
		log.Error("re-attach failed", "err", err)
		m.observe(rec.Name, api.StatusError, err.Error())
		return
	}
	st, err := drv.State(ctx, rec.Handle)
	if err != nil {
		m.observe(rec.Name, api.StatusError, err.Error())
		return
	}
	m.saveHandle(ctx, rec.Name, drv, rec.Handle)
	if rec.PausedBy != "" {
		st = m.undoOwnPause(ctx, rec, drv, st, log)
	}
	if st == driver.StatusGone {
		log.Error("driver lost the instance")
		return
	}
	if rec.Desired.Power == api.PowerRunning && st == driver.StatusStopped {
		// Started in an operation, so the daemon serves at once and the user can follow or cancel it.
		op, err := m.runLocked(rec.Name, "Starting instance "+rec.Name+" (it should be running)", nil,
			func(ctx context.Context, _ *operations.Op) error { return m.start(ctx, rec.Name) })
		if err != nil {
			log.Error("start at recovery", "err", err)
			return
		}
		log.Info("instance should run and does not: starting it", "operation", op.ID)
		return
	}
	if st == driver.StatusRunning || st == driver.StatusPaused {
		m.readoptDisks(ctx, rec)
		if err := m.holdRoot(ctx, rec); err != nil {
			log.Error("take back the root disk's lease", "err", err)
		}
	}
	log.Info("re-attached", "status", st, "desired", rec.Desired.Power)
}

// undoOwnPause resumes an instance that tandem paused (a snapshot) and a crash left paused, when the
// user wants it running, and drops the mark once the pause is gone. It returns the status after.
func (m *Manager) undoOwnPause(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver, st driver.Status, log *slog.Logger) driver.Status {
	if st == driver.StatusPaused && rec.Desired.Power == api.PowerRunning {
		p, ok := drv.(driver.Pauser)
		if !ok {
			return st
		}
		if err := p.Resume(ctx, rec.Handle); err != nil {
			log.Error("resume an instance a "+rec.PausedBy+" left paused", "err", err)
			m.observe(rec.Name, api.StatusPaused, "paused by an interrupted "+rec.PausedBy+"; resume failed: "+err.Error())
			return st
		}
		log.Warn("resumed an instance an interrupted " + rec.PausedBy + " had left paused")
		st = driver.StatusRunning
	}
	if st != driver.StatusPaused || rec.Desired.Power != api.PowerRunning {
		m.setPausedBy(rec.Name, "")
	}
	return st
}

// setPausedBy records (why) or clears ("") tandem's own pause of an instance.
func (m *Manager) setPausedBy(name, why string) error {
	_, err := m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		r.PausedBy = why
		return nil
	})
	if err != nil {
		slog.Error("record why the instance is paused", "instance", name, "paused_by", why, "err", err)
	}
	return err
}

func (m *Manager) observe(name, status, msg string) {
	m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		r.Observed = store.ObservedState{Status: status, Error: msg, At: time.Now().UTC()}
		return nil
	})
}

func handleDriver(rec *store.InstanceRecord) string {
	if rec.Handle == nil {
		return ""
	}
	return rec.Handle.Driver
}
