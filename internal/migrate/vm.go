package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"tandem/api"
	"tandem/internal/driver/vm"
	"tandem/internal/progress"
)

// moveVM follows internal/driver/vm/outgoing.go: the destination's QEMU waits for the stream;
// a disk on local storage is mirrored into the destination's NBD export first, then RAM goes
// with pre-copy and the guest resumes there.
func (o *outgoing) moveVM(ctx context.Context, post api.MigrationPost) error {
	vd, err := vmOf(o.drv)
	if err != nil {
		return err
	}
	h := o.rec.Handle
	o.step(4, "checking the VM can migrate")
	if err := vd.PrepareOutgoing(ctx, h); err != nil {
		return err
	}
	o.e.Instances.SaveHandle(ctx, o.rec.Name, o.drv, h)
	o.step(5, "starting QEMU on "+o.remote)
	if _, err := o.prepare(ctx, post); err != nil {
		return err
	}
	mig, err := o.tunnel(ctx, "migration")
	if err != nil {
		o.abortRemote()
		return err
	}
	defer mig.Close()
	opts := vm.MigrateOpts{URI: "unix:" + mig.path, AutoConverge: true, DowntimeLimit: 300 * time.Millisecond,
		MaxBandwidth: o.bw, MirrorBandwidth: o.bw, Progress: o.vmProgress}
	o.result.Mode = "live-shared"
	if o.shared == "" {
		o.result.Mode = "live-mirror"
		nbd, err := o.tunnel(ctx, "nbd")
		if err != nil {
			o.abortRemote()
			return err
		}
		defer nbd.Close()
		opts.NBD = "unix:" + nbd.path
	}
	if err := o.e.Instances.MarkOutgoing(o.rec.Name, o.id, o.remote); err != nil {
		o.abortRemote()
		return err
	}
	var res vm.MigrationResult
	err = o.transfer(func() (err error) {
		// opts.Progress reports; the driver's own percentages (progress.Report) would fight it.
		res, err = vd.MigrateOut(progress.With(ctx, nil), h, opts)
		return err
	})
	o.e.Instances.SaveHandle(context.WithoutCancel(ctx), o.rec.Name, o.drv, h)
	if err != nil {
		// The guest still runs here.
		o.abortRemote()
		o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
		return err
	}
	o.result.DowntimeMillis = res.Downtime.Milliseconds()
	o.sent.Add(res.RAMBytes + res.DiskBytes)
	o.op.SetMetadata("downtime_ms", o.result.DowntimeMillis)
	resume := func(cause error) error {
		o.abortRemote()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		err := vd.AbortOutgoing(rctx, h)
		o.e.Instances.SaveHandle(rctx, o.rec.Name, o.drv, h)
		if herr := o.e.Instances.HoldRoot(rctx, o.rec); herr != nil {
			slog.Warn("a resumed instance could not take its root's lease back", "instance", o.rec.Name, "err", herr)
		}
		if err != nil {
			return fmt.Errorf("%w; resuming it here failed too: %v", cause, err)
		}
		o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
		return cause
	}
	o.stage(StageRestore, 96, 0, 0, "resuming on "+o.remote)
	if ran, err := o.restoreRemote(ctx, api.MigrationRestorePost{}); !ran {
		return resume(err)
	}
	o.e.Instances.LetRootGo(o.rec.Name) // the destination takes the root's lease at the commit
	if err := o.commitRemote(ctx); err != nil {
		return o.undecidedOr(err, func() error { return resume(err) })
	}
	if err := vd.Release(context.WithoutCancel(ctx), h); err != nil {
		return fmt.Errorf("the instance runs on %s; releasing it here: %w", o.remote, err)
	}
	return o.finishHere(ctx)
}

// vmProgress turns QEMU's figures into the operation's progress (vmStage).
func (o *outgoing) vmProgress(p vm.MigrationProgress) {
	o.op.SetProgress(vmStage(p))
	o.op.SetMetadata("migration", map[string]any{"phase": p.Phase, "ram_sent": p.TransferredBytes,
		"ram_remaining": p.RemainingBytes, "dirty_rate": p.DirtyRate, "disk_done": p.DiskDone, "disk_total": p.DiskTotal})
}
