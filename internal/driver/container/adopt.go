package container

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/idmap"
	"tandem/internal/driver/container/rootfs"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// Adopt implements MigrationDestination. The handle is the source's (its DriverState is the
// source's state.json): the container keeps its id and its uid/gid range, which this host must
// have free (hosts share Options.IDFirst and IDSize). Adopting again is a no-op.
func (d *Driver) Adopt(ctx context.Context, h *driver.Handle, o AdoptOpts) (err error) {
	if err := d.available(); err != nil {
		return err
	}
	if err := checkID(h.ID); err != nil {
		return err
	}
	var st instState
	if err := json.Unmarshal(h.DriverState, &st); err != nil || st.ID != h.ID {
		return errdefs.Invalid("adopt %s: the handle carries no container state of it (%v)", h.ID, err)
	}
	if o.Rootfs != "" {
		if fi, err := os.Stat(o.Rootfs); err != nil || !fi.IsDir() || !filepath.IsAbs(o.Rootfs) {
			return errdefs.Invalid("adopt %s: rootfs %q is not an existing absolute directory (%v)", h.ID, o.Rootfs, err)
		}
	}
	if have, err := d.load(h.ID); err != nil {
		return err
	} else if have != nil {
		if have.IDs != st.IDs {
			return errdefs.Exists("container %s exists here with other ids", h.ID)
		}
		return nil
	}
	p := d.paths(h.ID)
	defer func() {
		if err != nil {
			if rerr := d.removeFiles(p); rerr != nil {
				logctx.From(ctx).Error("clean up after a failed adopt", "container", h.ID, "err", rerr)
			}
			if rerr := d.ids.Release(h.ID); rerr != nil {
				logctx.From(ctx).Error("release the ids after a failed adopt", "container", h.ID, "err", rerr)
			}
		}
	}()
	if !st.IDs.Identity() {
		if err := d.ids.Reserve(h.ID, idmap.Range{Base: st.IDs.Base, Size: st.IDs.Size}); err != nil {
			return fmt.Errorf("adopt %s: %w", h.ID, err)
		}
	}
	if err := d.removeFiles(p); err != nil { // leftovers of an interrupted adopt
		return err
	}
	if err := os.Mkdir(p.bundle, 0o700); err != nil {
		return err
	}
	if err := lockBundle(p, int(st.IDs.ToHost(0))); err != nil {
		return err
	}
	switch {
	case o.Rootfs != "":
		if err := os.Symlink(o.Rootfs, p.rootfs); err != nil {
			return err
		}
	case h.Spec.Root != nil: // a root disk on a pool: Restore mounts it
		if err := checkRoot(h.Spec.Root); err != nil {
			return err
		}
		if err := placeRoot(p, h.Spec.Root); err != nil {
			return err
		}
	}
	// What the source was doing with it is the source's business.
	st.Checkpoint, st.CheckpointTCP, st.CheckpointDir, st.Migration = false, false, "", ""
	return d.save(h, &st)
}

// CopyRootfs copies a container's rootfs tree (owners already in its host id range, kept as
// they are) to dst, which must not exist: the local-storage half of a migration when both trees
// are mounted here. Across hosts, any copy that keeps numeric owners, modes, hard links and
// xattrs (tar --xattrs --numeric-owner, rsync -aHAX --numeric-ids) does the same.
func CopyRootfs(ctx context.Context, src, dst string) error {
	return rootfs.Copy(ctx, src, dst, rootfs.IDMap{})
}

// Restore implements MigrationDestination.
func (d *Driver) Restore(ctx context.Context, h *driver.Handle, o RestoreOpts) (_ RestoreStats, err error) {
	start := time.Now()
	if err := d.available(); err != nil {
		return RestoreStats{}, err
	}
	st, err := d.mustLoad(h)
	if err != nil {
		return RestoreStats{}, fmt.Errorf("%w (adopt it first)", err)
	}
	if status, err := d.State(ctx, h); err != nil {
		return RestoreStats{}, err
	} else if status != driver.StatusStopped {
		return RestoreStats{}, errdefs.Conflict("container %s is %s here", h.ID, status)
	}
	if st.Migration != "" {
		return RestoreStats{}, errdefs.Conflict("container %s is itself being migrated (%s)", h.ID, st.Migration)
	}
	p := d.paths(h.ID)
	if fi, err := os.Stat(p.rootfs); h.Spec.Root == nil && (err != nil || !fi.IsDir()) {
		return RestoreStats{}, errdefs.Invalid("restore %s: no rootfs at %s (%v)", h.ID, p.rootfs, err)
	}
	if o.Lazy {
		if reason := d.lazyRefusal(st); reason != "" {
			return RestoreStats{}, errdefs.Unavailable("restore %s lazily: %s", h.ID, reason)
		}
	}
	if err := finishImages(o.Dir, st); err != nil { // ownership may not have survived the transfer
		return RestoreStats{}, fmt.Errorf("restore %s: images: %w", h.ID, err)
	}
	if err := d.cleanupRuntime(ctx, h.ID); err != nil {
		return RestoreStats{}, err
	}
	if err := os.MkdirAll(p.run, 0o700); err != nil {
		return RestoreStats{}, err
	}
	if h.Spec.Root != nil { // a root disk on a pool: mounted (unmounted again if the restore fails)
		if err := d.readyRoot(ctx, h, st, false); err != nil {
			if cerr := d.cleanupRuntime(context.WithoutCancel(ctx), h.ID); cerr != nil {
				logctx.From(ctx).Error("clean up after a failed restore", "container", h.ID, "err", cerr)
			}
			return RestoreStats{}, err
		}
	}
	var lazy *lazyPages
	defer func() {
		if err != nil {
			if lazy != nil {
				lazy.kill()
			}
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if cerr := d.cleanupRuntime(cctx, h.ID); cerr != nil {
				logctx.From(ctx).Error("clean up after a failed restore", "container", h.ID, "err", cerr)
			}
		}
	}()
	if o.Lazy {
		if lazy, err = d.startLazyPages(ctx, h.ID, p, o.Dir, o.PageServerAddr); err != nil {
			return RestoreStats{}, err
		}
	}
	progress.Report(ctx, 20, "restoring")
	if err := d.restoreFrom(ctx, h, st, o.Dir, lazy, o.NoAddresses); err != nil {
		if lazy != nil {
			err = fmt.Errorf("%w%s", err, lazy.errors())
		}
		return RestoreStats{}, err
	}
	stats := RestoreStats{Restored: time.Since(start), Running: time.Now()}
	if lazy != nil {
		stats.LazyDone = lazy.result()
	}
	return stats, d.save(h, st)
}

// MigrationFeatures says which migration modes this host offers.
type MigrationFeatures struct {
	// CRIU: this host can checkpoint and restore running containers; if not, NoCRIU says why.
	CRIU   bool
	NoCRIU string
	// PreDump: iterative pre-copy (needs soft-dirty page tracking, CONFIG_MEM_SOFT_DIRTY).
	PreDump bool
	// LazyPages: post-copy restore through userfaultfd.
	LazyPages bool
	// LazyUnprivileged: lazy restore of containers with a user namespace, whose restored
	// tasks open their userfaultfd themselves: needs vm.unprivileged_userfaultfd=1.
	LazyUnprivileged bool
	// LazyDump: this host can serve a lazy dump's pages. CRIU's page server needs a 4 MiB pipe
	// (F_SETPIPE_SZ; without it CRIU 4.1.1 fails the transfer with "splice: Bad file
	// descriptor"): fs.pipe-max-size >= 4194304, or CAP_SYS_RESOURCE, which these hosts drop.
	LazyDump bool
	Notes    []string
}

// lazyPipeSize is the pipe size CRIU's lazy page server asks for (PIPE_MAX_SIZE pages, rounded
// up to a power of two as the kernel does).
const lazyPipeSize = 4 << 20

var (
	criuFeaturesOnce sync.Once
	criuPreDump      bool
	criuLazy         bool
)

// MigrationFeatures probes CRIU (once per process) and the host's settings (each time: an
// administrator may change them).
func (d *Driver) MigrationFeatures(ctx context.Context) MigrationFeatures {
	if err := d.checkpointRefusal(ctx); err != nil {
		return MigrationFeatures{NoCRIU: err.Error(), Notes: []string{err.Error()}}
	}
	criuFeaturesOnce.Do(func() {
		check := func(f string) bool {
			return execQuiet(ctx, d.criuPath, "check", "--feature", f) == nil
		}
		criuPreDump, criuLazy = check("mem_dirty_track"), check("uffd-noncoop")
	})
	f := MigrationFeatures{CRIU: true, PreDump: criuPreDump, LazyPages: criuLazy}
	f.LazyUnprivileged = f.LazyPages && unprivilegedUffd()
	f.LazyDump = f.LazyPages && (hasCapSysResource() || pipeMaxSize() >= lazyPipeSize)
	if !f.PreDump {
		f.Notes = append(f.Notes, "no soft-dirty tracking: no iterative pre-dump")
	}
	if f.LazyPages && !f.LazyDump {
		f.Notes = append(f.Notes, fmt.Sprintf("fs.pipe-max-size is %d and CAP_SYS_RESOURCE is dropped: no lazy dump (CRIU's page server needs a %d-byte pipe)",
			pipeMaxSize(), lazyPipeSize))
	}
	if f.LazyPages && !f.LazyUnprivileged {
		f.Notes = append(f.Notes, "vm.unprivileged_userfaultfd=0: lazy restore only for privileged containers")
	}
	return f
}

// lazyRefusal says why st cannot be restored lazily here ("" if it can).
func (d *Driver) lazyRefusal(st *instState) string {
	f := d.MigrationFeatures(context.Background())
	switch {
	case !f.LazyPages:
		return "CRIU has no userfaultfd support on this kernel"
	case !st.IDs.Identity() && !f.LazyUnprivileged:
		return "the container has a user namespace, whose restored tasks may not open a userfaultfd with vm.unprivileged_userfaultfd=0"
	}
	return ""
}

// LazyRestoreRefusal says why an adopted container cannot be restored lazily here ("" if it can).
func (d *Driver) LazyRestoreRefusal(h *driver.Handle) string {
	st, err := d.mustLoad(h)
	if err != nil {
		return err.Error()
	}
	return d.lazyRefusal(st)
}

// LazyDumpRefusal says why this host cannot serve a lazy dump ("" if it can).
func (d *Driver) LazyDumpRefusal() string { return d.lazyDumpRefusal() }

// lazyDumpRefusal says why this host cannot serve a lazy dump ("" if it can).
func (d *Driver) lazyDumpRefusal() string {
	switch f := d.MigrationFeatures(context.Background()); {
	case !f.LazyPages:
		return "CRIU has no userfaultfd support on this kernel"
	case !f.LazyDump:
		return fmt.Sprintf("fs.pipe-max-size is %d and CAP_SYS_RESOURCE is dropped; CRIU's page server needs a %d-byte pipe (sysctl fs.pipe-max-size=%d)",
			pipeMaxSize(), lazyPipeSize, lazyPipeSize)
	}
	return ""
}

func pipeMaxSize() int {
	data, _ := os.ReadFile("/proc/sys/fs/pipe-max-size")
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

// hasCapSysResource reports whether this process has CAP_SYS_RESOURCE (bit 24) in effect.
func hasCapSysResource() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n&(1<<24) != 0
		}
	}
	return false
}

func unprivilegedUffd() bool {
	data, err := os.ReadFile("/proc/sys/vm/unprivileged_userfaultfd")
	return err == nil && strings.TrimSpace(string(data)) == "1"
}
