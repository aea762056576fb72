package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"tandem/api"
	"tandem/internal/driver/container"
)

// moveContainer follows internal/driver/container/MIGRATION.md: the rootfs goes while the
// container runs (unless shared), then freeze and dump, what changed and the dump go, and the
// destination restores. Cold: the rootfs goes and the destination takes the record.
func (o *outgoing) moveContainer(ctx context.Context, post api.MigrationPost) error {
	cd, err := containerOf(o.drv)
	if err != nil {
		return err
	}
	h := o.rec.Handle
	if o.live {
		f := cd.MigrationFeatures(ctx)
		if !f.CRIU {
			return fmt.Errorf("this host cannot checkpoint a running container: CRIU is missing")
		}
		// Pre-dump and lazy pages would shorten the freeze of a container with much memory; say
		// why they did not run.
		o.result.Notes = append(o.result.Notes, f.Notes...)
		if f.LazyDump {
			o.result.Notes = append(o.result.Notes, "lazy pages: not used for moves yet (the page server is not tunnelled)")
		}
	}
	root := cd.RootfsPath(h)
	needs(ctx, o.rec, o.drv, o.live, root, &post)
	o.step(5, "preparing "+o.remote)
	if err := o.prepare(ctx, post); err != nil {
		return err
	}
	if o.shared == "" {
		if err := o.rsync(ctx, root, "rootfs", 5, 45, "copying the root filesystem"); err != nil {
			o.abortRemote()
			return err
		}
	}
	if err := o.e.Instances.MarkOutgoing(o.rec.Name, o.id, o.remote); err != nil {
		o.abortRemote()
		return err
	}
	if !o.live {
		o.result.Mode = "cold"
		if ran, err := o.restoreRemote(ctx, api.MigrationRestorePost{}); !ran {
			o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
			return err
		}
		if err := o.commitRemote(ctx); err != nil {
			return o.undecidedOr(err, func() error { return nil })
		}
		if err := cd.MarkMoved(context.WithoutCancel(ctx), h); err != nil {
			return err
		}
		return o.releaseContainer(ctx, cd, "")
	}

	o.result.Mode = "live-copy"
	if o.shared != "" {
		o.result.Mode = "live-shared"
	}
	// The dump is copied even with a shared root: it is small, and the hosts need not mount the
	// shared pool at the same path.
	dumpDir := filepath.Join(o.e.Dir, "outgoing", o.id)
	defer os.RemoveAll(dumpDir)
	o.step(50, "freezing and dumping")
	frozen := time.Now()
	_, err = cd.Dump(ctx, h, container.DumpOpts{Dir: dumpDir, TCPEstablished: true})
	o.e.Instances.SaveHandle(context.WithoutCancel(ctx), o.rec.Name, o.drv, h)
	if err != nil {
		o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
		o.abortRemote()
		return err
	}
	resume := func(cause error) error {
		o.abortRemote()
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		err := cd.AbortDump(rctx, h)
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
	dumped := time.Now()
	if o.shared != "" { // the destination mounts the shared root image alone
		if err := cd.UnmountRoot(ctx, h); err != nil {
			return resume(err)
		}
	}
	// Both inside the freeze: side by side.
	var wg sync.WaitGroup
	var rootErr error
	if o.shared == "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rootErr = o.rsync(ctx, root, "rootfs", 55, 70, "copying what changed")
		}()
	}
	dumpErr := o.rsync(ctx, dumpDir, "dump", 70, 85, "copying the dump")
	wg.Wait()
	if err := errors.Join(rootErr, dumpErr); err != nil {
		return resume(err)
	}
	copied := time.Now()
	o.step(88, "restoring on "+o.remote)
	if ran, err := o.restoreRemote(ctx, api.MigrationRestorePost{}); !ran {
		return resume(err)
	}
	o.e.Instances.LetRootGo(o.rec.Name) // the destination takes the root's lease at the commit
	o.result.FreezeMillis = time.Since(frozen).Milliseconds()
	slog.Info("container moved: freeze", "instance", o.rec.Name, "dump", dumped.Sub(frozen).Round(time.Millisecond),
		"copy", copied.Sub(dumped).Round(time.Millisecond), "restore", time.Since(copied).Round(time.Millisecond))
	if err := o.commitRemote(ctx); err != nil {
		return o.undecidedOr(err, func() error { return resume(err) })
	}
	if err := cd.CommitDump(context.WithoutCancel(ctx), h); err != nil {
		return fmt.Errorf("the instance runs on %s; %w", o.remote, err)
	}
	return o.releaseContainer(ctx, cd, dumpDir)
}

// releaseContainer drops the source's copy once the destination has it.
func (o *outgoing) releaseContainer(ctx context.Context, cd containerMover, dumpDir string) error {
	err := cd.Release(context.WithoutCancel(ctx), o.rec.Handle, container.ReleaseOpts{KeepRootfs: o.shared != ""})
	if err != nil {
		return fmt.Errorf("the instance is on %s; releasing it here: %w", o.remote, err)
	}
	return o.finishHere(ctx)
}

// undecidedOr handles a failed commit: when the destination cannot say how it ended, the
// instance stays as it is here and recovery keeps asking; otherwise undo runs.
func (o *outgoing) undecidedOr(err error, undo func() error) error {
	if errors.Is(err, errUndecided) {
		o.e.settleLater(o.rec.Name, o.id, o.remote)
		return fmt.Errorf("%w: %s keeps asking %s in the background", err, o.rec.Name, o.remote)
	}
	if uerr := undo(); uerr != nil {
		return uerr
	}
	o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
	return err
}
