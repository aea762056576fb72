package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/progress"
)

// Live migration primitives: the source dumps, the destination adopts and restores, the source
// commits and releases (or aborts and runs on). No transport here: the caller moves the handle,
// the image directory and (on local storage) the rootfs between hosts. See MIGRATION.md.

// MigrationSource is the source host's side of a container's live migration.
type MigrationSource interface {
	// Dump checkpoints a running container into opts.Dir. On failure the container runs on.
	// On success (without LeaveRunning) it is frozen (Lazy: until CommitDump or AbortDump) or
	// stopped with its images kept (AbortDump, or Start, restores it here).
	Dump(ctx context.Context, h *driver.Handle, opts DumpOpts) (DumpStats, error)
	// CommitDump is called once the destination runs the container. Lazy: it lets the page
	// transfer finish and waits for it. Afterwards Start is refused and Release drops it.
	CommitDump(ctx context.Context, h *driver.Handle) error
	// AbortDump makes the source run the container again after a failed destination. Never
	// after the destination's Restore succeeded.
	AbortDump(ctx context.Context, h *driver.Handle) error
	// Release drops a container that now runs elsewhere, keeping a shared rootfs.
	Release(ctx context.Context, h *driver.Handle, opts ReleaseOpts) error
	RootfsPath(h *driver.Handle) string
}

// MigrationDestination is the destination host's side.
type MigrationDestination interface {
	// Adopt takes over the handle's resources: its uid/gid range, its bundle directory and,
	// with opts.Rootfs, a shared rootfs. Delete undoes it.
	Adopt(ctx context.Context, h *driver.Handle, opts AdoptOpts) error
	// RootfsPath is where an adopted container's rootfs is (to be copied into, on local storage).
	RootfsPath(h *driver.Handle) string
	// Restore runs the adopted container from the source's images. On failure nothing of it
	// runs here; Delete then drops what Adopt took.
	Restore(ctx context.Context, h *driver.Handle, opts RestoreOpts) (RestoreStats, error)
	Delete(ctx context.Context, h *driver.Handle) error
}

var (
	_ MigrationSource      = (*Driver)(nil)
	_ MigrationDestination = (*Driver)(nil)
)

// DumpOpts tune a migration dump.
type DumpOpts struct {
	// Dir receives CRIU's images and the driver's tandem-dump.json; it must not exist or be
	// empty. Transfer it whole to the destination (on a shared pool: nothing to transfer).
	Dir string
	// LeaveRunning keeps the source running (a copy, not a move; no TCP then: both copies
	// would answer the same connections).
	LeaveRunning bool
	// TCPEstablished carries established TCP connections (they stay frozen in between).
	TCPEstablished bool
	// Lazy leaves memory in the frozen source, served on PageServerAddr (host:port, an address
	// of this host the destination reaches) until the destination has pulled it: post-copy.
	Lazy           bool
	PageServerAddr string
}

// DumpStats describe a dump.
type DumpStats struct {
	Started time.Time     // the dump began; the container freezes within milliseconds
	Dumped  time.Duration // until the images were written (Lazy: until the page server was ready)
	Size    int64         // bytes in Dir (Lazy: without memory)
	Lazy    bool
}

// RestoreOpts tune the destination's restore.
type RestoreOpts struct {
	Dir string // the images of the source's Dump, here
	// Lazy takes memory from the source's page server at PageServerAddr (the source's
	// DumpOpts.PageServerAddr as seen from here).
	Lazy           bool
	PageServerAddr string
	// NoAddresses leaves out the source's addresses and routes (a copy that must not take the
	// source's network identity; it gets its own from PrepareNetwork or DHCP).
	NoAddresses bool
}

// RestoreStats describe a restore.
type RestoreStats struct {
	Restored time.Duration // from the call to the container running
	Running  time.Time
	// LazyDone, for a lazy restore, yields the lazy-pages daemon's end (nil error: every page
	// arrived) and is then closed.
	LazyDone <-chan error
}

// AdoptOpts say where an adopted container's rootfs is.
type AdoptOpts struct {
	// Rootfs is an existing rootfs directory the destination uses in place (a shared pool: the
	// same path on both hosts); it is never deleted by this driver. "" means RootfsPath(h), which
	// the caller fills (a copy of the source's tree, owners kept) before Restore.
	Rootfs string
}

// ReleaseOpts tune Release.
type ReleaseOpts struct {
	// KeepRootfs leaves the rootfs directory (the destination uses it, on shared storage).
	KeepRootfs bool
}

// Migration states of the source (instState.Migration).
const (
	migDumping = "dumping" // recorded before a dump: a daemon crash mid-dump is settled by Recover
	migLazy    = "lazy"
	migDumped  = "dumped"
	migMoved   = "moved"
)

// Dump implements MigrationSource.
func (d *Driver) Dump(ctx context.Context, h *driver.Handle, o DumpOpts) (DumpStats, error) {
	st, err := d.mustLoad(h)
	if err != nil {
		return DumpStats{}, err
	}
	if d.criuPath == "" {
		return DumpStats{}, errdefs.Unavailable("migration needs CRIU, which is not installed")
	}
	if err := d.checkpointRefusal(ctx); err != nil {
		return DumpStats{}, err
	}
	if status, err := d.State(ctx, h); err != nil {
		return DumpStats{}, err
	} else if status != driver.StatusRunning && status != driver.StatusPaused {
		return DumpStats{}, driver.ErrNotRunning
	}
	if st.Migration != "" {
		return DumpStats{}, errdefs.Conflict("container %s is being migrated (%s)", h.ID, st.Migration)
	}
	switch {
	case o.Dir == "" || !filepath.IsAbs(o.Dir):
		return DumpStats{}, errdefs.Invalid("dump: the image directory must be an absolute path (got %q)", o.Dir)
	case o.Lazy && o.LeaveRunning:
		return DumpStats{}, errdefs.Invalid("dump: a lazy dump cannot leave the container running")
	case o.Lazy && o.PageServerAddr == "":
		return DumpStats{}, errdefs.Invalid("dump: a lazy dump needs a page server address")
	case o.LeaveRunning && o.TCPEstablished:
		return DumpStats{}, errdefs.Invalid("dump: TCP connections cannot be carried by a copy that leaves the source running")
	}
	if err := emptyDir(o.Dir); err != nil {
		return DumpStats{}, err
	}
	if o.Lazy {
		return d.dumpLazy(ctx, h, st, o)
	}
	progress.Report(ctx, 10, "dumping")
	if !o.LeaveRunning {
		st.Migration, st.CheckpointDir, st.CheckpointTCP = migDumping, o.Dir, o.TCPEstablished
		if err := d.save(h, st); err != nil {
			return DumpStats{}, err
		}
	}
	stats := DumpStats{Started: time.Now()}
	err = d.dumpImages(ctx, h, st, runc.CheckpointOpts{ImagePath: o.Dir, LeaveRunning: o.LeaveRunning,
		TCPEstablished: o.TCPEstablished})
	stats.Dumped, stats.Size = time.Since(stats.Started), dirSize(o.Dir)
	if err != nil {
		return stats, d.afterFailedDump(ctx, h, st, o.Dir, err)
	}
	if o.LeaveRunning {
		return stats, nil
	}
	// Gone here, the container's network namespace (and veth, MAC, address) must not linger
	// while the same comes up on the destination.
	if err := unmountNetns(d.paths(h.ID).netns); err != nil {
		slog.Warn("dump: unmount the network namespace", "container", h.ID, "err", err)
	}
	st.Checkpoint, st.CheckpointTCP, st.CheckpointDir, st.Migration = true, o.TCPEstablished, o.Dir, migDumped
	if err := d.save(h, st); err != nil {
		return stats, err
	}
	if err := d.cleanupRuntime(ctx, h.ID); err != nil {
		slog.Warn("dump: clean up the runtime", "container", h.ID, "err", err)
	}
	return stats, nil
}

// afterFailedDump makes sure a failed dump leaves the container running: CRIU resumes it on
// failure, but if it had been stopped already (a failure after the images were complete) it
// is restored from them here.
func (d *Driver) afterFailedDump(ctx context.Context, h *driver.Handle, st *instState, dir string, err error) error {
	if status, serr := d.State(ctx, h); serr == nil && (status == driver.StatusRunning || status == driver.StatusPaused) {
		st.Migration, st.CheckpointDir = "", ""
		return errors.Join(err, d.save(h, st))
	}
	if _, serr := os.Stat(filepath.Join(dir, "inventory.img")); serr != nil {
		return fmt.Errorf("%w; the container stopped and its images are incomplete", err)
	}
	st.Checkpoint, st.CheckpointDir, st.Migration = true, dir, ""
	if serr := d.save(h, st); serr != nil {
		return errors.Join(err, serr)
	}
	if rerr := d.Start(context.WithoutCancel(ctx), h); rerr != nil {
		return fmt.Errorf("%w; restoring it here failed too: %v", err, rerr)
	}
	return err
}

// settleDumping decides, after a daemon restart, how a dump the crash interrupted ended: a
// running container means it failed (CRIU resumed it); complete images of a stopped one mean
// it succeeded.
func (d *Driver) settleDumping(ctx context.Context, h *driver.Handle, st *instState) error {
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	switch {
	case status == driver.StatusRunning || status == driver.StatusPaused:
		st.Migration, st.CheckpointDir = "", ""
	case fileExists(filepath.Join(st.CheckpointDir, "inventory.img")):
		if err := finishImages(st.CheckpointDir, st); err != nil {
			return err
		}
		st.Checkpoint, st.Migration = true, migDumped
	default:
		slog.Error("a dump was cut short and left neither a running container nor images", "container", h.ID)
		st.Migration, st.CheckpointDir = "", ""
	}
	return d.save(h, st)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// CommitDump implements MigrationSource.
func (d *Driver) CommitDump(ctx context.Context, h *driver.Handle) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	switch st.Migration {
	case migMoved:
		return nil
	case migLazy:
		return d.commitLazy(ctx, h, st)
	case migDumped:
		st.Migration, st.Checkpoint, st.CheckpointDir = migMoved, false, ""
		return d.save(h, st)
	}
	return errdefs.Conflict("container %s has no migration dump to commit", h.ID)
}

// AbortDump implements MigrationSource.
func (d *Driver) AbortDump(ctx context.Context, h *driver.Handle) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if st.Migration == migDumping {
		if err := d.settleDumping(ctx, h, st); err != nil {
			return err
		}
	}
	switch st.Migration {
	case "":
		return nil
	case migMoved:
		return errdefs.Conflict("container %s was committed to another host; it cannot resume here", h.ID)
	case migLazy:
		return d.abortLazy(ctx, h, st)
	}
	progress.Report(ctx, 50, "resuming on the source")
	return d.Start(ctx, h) // restores from CheckpointDir and clears Migration
}

// Release implements MigrationSource: like Delete, but only for a container committed to
// another host, and a rootfs the destination uses stays.
func (d *Driver) Release(ctx context.Context, h *driver.Handle, o ReleaseOpts) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if st.Migration != migMoved {
		return errdefs.Conflict("container %s was not committed to another host (migration %q): refusing to release it", h.ID, st.Migration)
	}
	p := d.paths(h.ID)
	if err := d.cleanupRuntime(ctx, h.ID); err != nil {
		return err
	}
	if err := os.RemoveAll(p.run); err != nil {
		return err
	}
	if err := os.RemoveAll(p.checkpoint); err != nil {
		return err
	}
	entries, err := os.ReadDir(p.bundle)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range entries {
		if o.KeepRootfs && e.Name() == "rootfs" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(p.bundle, e.Name())); err != nil {
			return err
		}
	}
	if !o.KeepRootfs {
		if err := os.Remove(p.bundle); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := d.ids.Release(h.ID); err != nil {
		return err
	}
	h.DriverState = nil
	return nil
}

// RootfsPath returns the container's rootfs directory (a shared rootfs resolved). A root disk
// that is an ext4 image is mounted for it, until the container stops after its next run, or is
// released or deleted.
func (d *Driver) RootfsPath(h *driver.Handle) string {
	p := d.paths(h.ID)
	if r := h.Spec.Root; r != nil && r.Format == driver.RootExt4 && !fsutil.MountedAt(p.rootfs) {
		if err := placeRoot(p, r); err == nil {
			if err := fsutil.LoopMount(context.Background(), r.Path, p.rootfs, false); err != nil {
				slog.Error("mount the root disk", "container", h.ID, "err", err)
			}
		}
	}
	if real, err := filepath.EvalSymlinks(p.rootfs); err == nil {
		return real
	}
	return p.rootfs
}

// emptyDir makes sure dir exists and is empty.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		return errdefs.Conflict("image directory %s is not empty", dir)
	}
	return nil
}

// MarkMoved hands a stopped container to another host (a cold move): Start is refused from now
// on and Release drops it.
func (d *Driver) MarkMoved(ctx context.Context, h *driver.Handle) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if s, err := d.State(ctx, h); err != nil || s != driver.StatusStopped {
		return errdefs.Conflict("container %s is not stopped (%s, %v): a cold move needs it stopped", h.ID, s, err)
	}
	if st.Migration != "" && st.Migration != migMoved {
		return errdefs.Conflict("container %s is mid-migration (%s)", h.ID, st.Migration)
	}
	st.Migration, st.Checkpoint, st.CheckpointDir = migMoved, false, ""
	return d.save(h, st)
}

// UnmountRoot unmounts the image root of a container that no longer runs here (dumped for a move
// on a shared pool), so that the destination mounts it alone; AbortDump mounts it again.
func (d *Driver) UnmountRoot(ctx context.Context, h *driver.Handle) error {
	if s, err := d.State(ctx, h); err != nil || s == driver.StatusRunning || s == driver.StatusPaused {
		return errdefs.Conflict("container %s still runs here (%s, %v): its root stays mounted", h.ID, s, err)
	}
	return releaseRoot(d.paths(h.ID))
}
