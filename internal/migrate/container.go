package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"tandem/api"
	"tandem/internal/driver/container"
	"tandem/internal/errdefs"
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
			return errdefs.Unavailable("this host cannot checkpoint a running container: %s", f.NoCRIU)
		}
		// Pre-dump would shorten the freeze of a container with much memory: say why it did not
		// run. Lazy pages get a line of their own below.
		o.result.Notes = append(o.result.Notes, withoutLazy(f.Notes)...)
		if why := o.lazyRefusalHere(cd); why != "" && o.lazyRequired() {
			return errdefs.Unavailable("lazy pages were asked for: %s", why)
		}
	}
	root := cd.RootfsPath(h)
	needs(ctx, o.rec, o.drv, o.live, root, &post)
	o.step(5, "preparing "+o.remote)
	info, err := o.prepare(ctx, post)
	if err != nil {
		return err
	}
	lazy := false
	if o.live {
		why := o.lazyRefusalHere(cd)
		if why == "" {
			why = o.lazyRefusalThere(info)
		}
		if why != "" && o.lazyRequired() {
			o.abortRemote()
			return errdefs.Unavailable("lazy pages were asked for: %s", why)
		}
		if lazy = why == ""; !lazy {
			o.result.Notes = append(o.result.Notes, "lazy pages: not used: "+why)
		}
	}
	if o.shared == "" {
		if err := o.rsync(ctx, StageRootfs, root, "rootfs", 5, 45, "copying the root filesystem"); err != nil {
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
	if lazy {
		o.result.Mode = "lazy"
	}
	// The dump is copied even with a shared root: it is small, and the hosts need not mount the
	// shared pool at the same path.
	dumpDir := filepath.Join(o.e.Dir, "outgoing", o.id)
	defer os.RemoveAll(dumpDir)
	o.stage(StageDump, 50, 0, 0, "freezing and dumping")
	frozen := time.Now()
	dopts := container.DumpOpts{Dir: dumpDir, TCPEstablished: true, Lazy: lazy}
	if lazy { // the page server answers on this daemon's loopback; the destination comes through a tunnel
		if dopts.PageServerAddr, err = loopbackAddr(); err != nil {
			o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
			o.abortRemote()
			return err
		}
	}
	// CRIU says nothing while it dumps: what it wrote so far is the progress.
	stopSampling := sample(ctx, func() {
		n := dirBytes(dumpDir)
		o.stage(StageDump, 50, n, 0, "freezing and dumping: "+size(n)+" written")
	})
	_, err = cd.Dump(ctx, h, dopts)
	if lazy && errors.Is(err, errdefs.ErrUnavailable) && !o.lazyRequired() {
		// Refused before anything froze (e.g. a container started before lazy dumps existed).
		lazy, dopts.Lazy, dopts.PageServerAddr, o.result.Mode = false, false, "", "live-copy"
		o.result.Notes = append(o.result.Notes, "lazy pages: not used: "+err.Error())
		_, err = cd.Dump(ctx, h, dopts)
	}
	stopSampling()
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
			rootErr = o.rsync(ctx, StageSend, root, "rootfs", 55, 70, "copying what changed")
		}()
	}
	dumpErr := o.rsync(ctx, StageSend, dumpDir, "dump", 70, 85, "copying the dump")
	wg.Wait()
	if err := errors.Join(rootErr, dumpErr); err != nil {
		return resume(err)
	}
	var pages *pagesLink
	if lazy { // before the restore: the destination's lazy-pages daemon connects during it
		if pages, err = joinPages(ctx, o.openTunnel("pages"), dopts.PageServerAddr, o.bw, o.touch); err != nil {
			return resume(err)
		}
		defer func() { o.sent.Add(pages.sent.Load()) }()
	}
	copied := time.Now()
	o.stage(StageRestore, 88, 0, 0, "restoring on "+o.remote)
	if ran, err := o.restoreRemote(ctx, api.MigrationRestorePost{Lazy: lazy}); !ran {
		if pages != nil {
			pages.cut()
		}
		return resume(err)
	}
	o.e.Instances.LetRootGo(o.rec.Name) // the destination takes the root's lease at the commit
	o.result.FreezeMillis = time.Since(frozen).Milliseconds()
	slog.Info("container moved: freeze", "instance", o.rec.Name, "dump", dumped.Sub(frozen).Round(time.Millisecond),
		"copy", copied.Sub(dumped).Round(time.Millisecond), "restore", time.Since(copied).Round(time.Millisecond))
	if lazy {
		if err := o.awaitPages(ctx, cd, pages); err != nil {
			return resume(err)
		}
	}
	if err := o.commitRemote(ctx); err != nil {
		return o.undecidedOr(err, func() error { return resume(err) })
	}
	if err := cd.CommitDump(context.WithoutCancel(ctx), h); err != nil {
		return fmt.Errorf("the instance runs on %s; %w", o.remote, err)
	}
	if pages != nil {
		pages.finish(5 * time.Second) // the destination's lazy-pages daemon got its last answer
	}
	return o.releaseContainer(ctx, cd, dumpDir)
}

// awaitPages waits, after a lazy restore, until the destination has pulled every page. Until then
// the destination does not own the instance: on failure (the link died, it went away, the move was
// cancelled) it is made to drop its copy, whose memory has holes, before the source, which kept
// every page frozen, resumes. The destination's copy ran meanwhile: what it wrote to a copied root
// is dropped with it.
func (o *outgoing) awaitPages(ctx context.Context, cd containerMover, pages *pagesLink) error {
	o.stage(StageMemory, 92, 0, 0, "memory follows to "+o.remote)
	start := time.Now()
	stopSampling := sample(ctx, func() {
		n := pages.sent.Load()
		o.stage(StageMemory, 92, n, 0, "memory follows to "+o.remote+": "+size(n)+" sent")
	})
	err := o.transfer(func() error { return cd.WaitLazyPages(ctx, o.rec.Handle) })
	stopSampling()
	if err != nil {
		pages.cut()
		o.dropRemote()
		return fmt.Errorf("the memory transfer to %s failed before every page had arrived: %w", o.remote, err)
	}
	o.result.PagesMillis = time.Since(start).Milliseconds()
	slog.Info("lazy move: every page arrived", "instance", o.rec.Name, "took", time.Since(start).Round(time.Millisecond),
		"bytes", pages.sent.Load())
	return nil
}

func (o *outgoing) lazyRequired() bool { return o.lazy != nil && *o.lazy }

// lazyRefusalHere says why this host or this request rules out a lazy move ("" if nothing does).
func (o *outgoing) lazyRefusalHere(cd containerMover) string {
	if o.lazy != nil && !*o.lazy {
		return "turned off for this move (lazy: false)"
	}
	if why := cd.LazyDumpRefusal(); why != "" {
		return "this host cannot serve pages: " + why
	}
	if o.shared != "" {
		// A destination copy that fails mid-transfer is dropped and the source resumes where it
		// froze: sound only when the copy's writes go with it (a copied root). A shared root would
		// keep them (and an ext4 image would be mounted by both hosts while the source is frozen).
		return "the root is on a shared pool: the source could not resume safely after a destination that ran and failed mid-transfer"
	}
	return ""
}

// lazyRefusalThere says why the destination rules out a lazy move ("" if it offers one).
func (o *outgoing) lazyRefusalThere(info *api.MigrationInfo) string {
	if slices.Contains(info.Modes, "lazy") {
		return ""
	}
	var why []string
	for _, n := range info.Notes {
		if s, ok := strings.CutPrefix(n, "lazy pages: "); ok {
			why = append(why, s)
		}
	}
	if len(why) == 0 {
		return o.remote + " does not offer it"
	}
	return o.remote + ": " + strings.Join(why, "; ")
}

// withoutLazy drops the features' notes about lazy pages (the move says once whether and why).
func withoutLazy(notes []string) []string {
	var out []string
	for _, n := range notes {
		if !strings.Contains(n, "lazy") {
			out = append(out, n)
		}
	}
	return out
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
