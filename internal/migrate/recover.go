package migrate

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"tandem/api"
	"tandem/client"
	"tandem/internal/driver"
	"tandem/internal/instance"
	"tandem/internal/store"
)

// settleRetry is how often a source asks an unreachable destination how a move ended.
var settleRetry = 10 * time.Second

// RecoverIncoming drops what a dead daemon was receiving: it never committed, so the source
// still has the instance (or resumes it when it hears the migration is unknown here).
func (e *Engine) RecoverIncoming(ctx context.Context, rec *store.InstanceRecord, id string) {
	in, err := e.Instances.ResumeIncoming(rec)
	if err != nil {
		slog.Error("settle an interrupted incoming migration", "instance", rec.Name, "err", err)
		return
	}
	if err := in.Driver.Recover(ctx, rec.Handle); err != nil {
		slog.Warn("re-attach an incoming instance before dropping it", "instance", rec.Name, "err", err)
	}
	c := &incoming{id: id, post: api.MigrationPost{ID: id, Name: rec.Name, Type: rec.Type}, in: in, status: api.MigrationPreparing,
		stop: make(chan struct{})}
	e.dropDriver(ctx, c)
	in.Drop(ctx)
	e.mu.Lock()
	e.finished[id] = finished{status: api.MigrationAborted, err: "the daemon restarted before the commit", at: time.Now()}
	e.mu.Unlock()
	slog.Warn("dropped an instance whose incoming migration a restart interrupted", "instance", rec.Name, "migration", id)
}

// RecoverOutgoing re-attaches an instance a dead daemon was moving and asks the destination how
// the move ended, in the background until it knows.
func (e *Engine) RecoverOutgoing(ctx context.Context, rec *store.InstanceRecord, id, remote string) {
	if _, drv, err := e.Instances.Record(rec.Name); err == nil {
		if err := drv.Recover(ctx, rec.Handle); err != nil {
			slog.Warn("re-attach an instance that was moving", "instance", rec.Name, "err", err)
		}
	}
	e.Instances.Observe(rec.Name, api.StatusError, "interrupted while moving to "+remote+": asking it how it ended")
	e.settleLater(rec.Name, id, remote)
}

// settleLater finishes or undoes a move on this (source) side once the destination says how it
// ended: committed → release here; anything else → resume here.
func (e *Engine) settleLater(name, id, remote string) {
	go func() {
		for {
			if e.settleOnce(name, id, remote) {
				return
			}
			time.Sleep(settleRetry)
		}
	}()
}

// settleOnce returns true when the move is settled (or nothing is left to settle).
func (e *Engine) settleOnce(name, id, remote string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	committed, known := e.askDestination(ctx, id, remote)
	if !known {
		return false
	}
	release, err := e.Instances.Hold(name, "migration "+id)
	if err != nil {
		return false // an operation holds it; try again
	}
	defer release()
	rec, drv, err := e.Instances.Record(name)
	if err != nil {
		return true
	}
	if pid, _, ok := instance.ParseOutgoing(rec.Pending); !ok || pid != id {
		return true
	}
	log := slog.With("instance", name, "migration", id, "remote", remote)
	o := &outgoing{e: e, id: id, remote: remote, rec: rec, drv: drv, shared: sharedRoot(rec)}
	if committed {
		log.Info("the destination committed the move: releasing the instance here")
		err = o.releaseAfterCommit(ctx)
	} else {
		log.Warn("the destination does not run the instance: resuming it here")
		err = o.resumeAfterAbort(ctx)
	}
	if err != nil {
		log.Error("settle a move", "err", err)
		e.Instances.Observe(name, api.StatusError, err.Error())
	}
	return true
}

// askDestination says whether the destination committed migration id; known is false while it
// cannot be reached. A migration it is still holding uncommitted is aborted first.
func (e *Engine) askDestination(ctx context.Context, id, remote string) (committed, known bool) {
	cl, err := e.remote(remote)
	if err != nil {
		slog.Warn("settle a move: remote", "remote", remote, "err", err)
		return false, false
	}
	info, err := cl.GetMigration(ctx, id)
	switch {
	case client.IsStatus(err, http.StatusNotFound):
		return false, true
	case err != nil:
		return false, false
	case info.Status == api.MigrationCommitted:
		return true, true
	case info.Status == api.MigrationAborted:
		return false, true
	}
	err = cl.AbortMigration(ctx, id)
	if client.IsStatus(err, http.StatusConflict) { // it committed in between
		return true, true
	}
	return false, err == nil || client.IsStatus(err, http.StatusNotFound)
}

// releaseAfterCommit drops the source's copy of an instance the destination committed.
func (o *outgoing) releaseAfterCommit(ctx context.Context) error {
	h := o.rec.Handle
	switch o.rec.Type {
	case api.TypeContainer:
		cd, err := containerOf(o.drv)
		if err != nil {
			return err
		}
		if err := cd.CommitDump(ctx, h); err != nil { // a cold move has no dump
			// A lazy dump whose daemon died between the destination's commit and its own: the
			// proxy's reset made CRIU resume the tasks here, but the destination owns them now.
			if st, serr := o.drv.State(ctx, h); serr == nil && (st == driver.StatusRunning || st == driver.StatusPaused) {
				slog.Error("the instance runs here and on the destination, which committed it: stopping it here", "instance", o.rec.Name)
				if err := o.drv.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
					return err
				}
			}
			if err := cd.MarkMoved(ctx, h); err != nil {
				return err
			}
		}
		return o.releaseContainer(ctx, cd, "")
	case api.TypeVM:
		vd, err := vmOf(o.drv)
		if err != nil {
			return err
		}
		if o.stoppedHere(ctx) { // a cold move, or a source QEMU that died: nothing to release
			err = o.drv.Delete(ctx, h)
		} else {
			err = vd.Release(ctx, h)
		}
		if err != nil {
			return err
		}
		return o.finishHere(ctx)
	}
	return nil
}

// stoppedHere says whether the instance has nothing running on this host.
func (o *outgoing) stoppedHere(ctx context.Context) bool {
	st, err := o.drv.State(ctx, o.rec.Handle)
	return err == nil && (st == driver.StatusStopped || st == driver.StatusGone)
}

// resumeAfterAbort runs the instance here again after the destination dropped it.
func (o *outgoing) resumeAfterAbort(ctx context.Context) error {
	h := o.rec.Handle
	var err error
	switch o.rec.Type {
	case api.TypeContainer:
		var cd containerMover
		if cd, err = containerOf(o.drv); err == nil {
			err = cd.AbortDump(ctx, h)
		}
	case api.TypeVM:
		stopped := o.stoppedHere(ctx)
		var vd vmMover
		if vd, err = vmOf(o.drv); err == nil {
			err = vd.AbortOutgoing(ctx, h)
		}
		if err != nil && stopped { // a cold move: it was stopped and stays so
			slog.Info("a stopped VM's move was dropped by the destination: it stays here", "instance", o.rec.Name, "why", err)
			err = nil
		}
	}
	o.e.Instances.SaveHandle(ctx, o.rec.Name, o.drv, h)
	if err != nil {
		return err
	}
	return o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
}
