package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"tandem/internal/driver"
	"tandem/internal/driver/container/rootfs"
	"tandem/internal/driver/container/runc"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// CheckpointOpts tune a checkpoint.
type CheckpointOpts struct {
	// LeaveRunning keeps the container running after the dump (a stateful snapshot); otherwise
	// CRIU stops it and the next Start restores it.
	LeaveRunning bool
	// TCPEstablished carries established TCP connections (they are frozen until the restore).
	TCPEstablished bool
}

// Checkpointer saves and restores the memory state of running instances.
type Checkpointer interface {
	// Checkpoint dumps a running instance's state. Without LeaveRunning the instance stops and
	// its next Start restores the state instead of booting.
	Checkpoint(ctx context.Context, h *driver.Handle, opts CheckpointOpts) error
	// HasCheckpoint reports whether the next Start restores a checkpoint.
	HasCheckpoint(ctx context.Context, h *driver.Handle) (bool, error)
	// DiscardCheckpoint drops a checkpoint, so that the next Start boots afresh.
	DiscardCheckpoint(ctx context.Context, h *driver.Handle) error
}

// Checkpoint implements Checkpointer with `runc checkpoint` (CRIU). Stop with Stateful is
// Checkpoint without LeaveRunning.
func (d *Driver) Checkpoint(ctx context.Context, h *driver.Handle, opts CheckpointOpts) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if status, err := d.State(ctx, h); err != nil {
		return err
	} else if status != driver.StatusRunning && status != driver.StatusPaused {
		return driver.ErrNotRunning
	}
	return d.checkpoint(ctx, h, st, opts)
}

func (d *Driver) checkpoint(ctx context.Context, h *driver.Handle, st *instState, opts CheckpointOpts) error {
	if d.criuPath == "" {
		return errdefs.Unavailable("checkpoint needs CRIU, which is not installed")
	}
	if err := d.checkpointRefusal(ctx); err != nil {
		return err
	}
	p := d.paths(h.ID)
	if err := os.RemoveAll(p.checkpoint); err != nil {
		return err
	}
	progress.Report(ctx, 10, "checkpointing")
	ro := runc.CheckpointOpts{ImagePath: p.checkpoint, LeaveRunning: opts.LeaveRunning, TCPEstablished: opts.TCPEstablished}
	if err := d.dumpImages(ctx, h, st, ro); err != nil {
		// A dump that failed (or was killed) after CRIU had written every image and ended the
		// tasks has the container's only state in them: keep them for the next Start.
		status, serr := d.State(context.WithoutCancel(ctx), h)
		if opts.LeaveRunning || serr != nil || status != driver.StatusStopped || !fileExists(filepath.Join(p.checkpoint, "inventory.img")) ||
			finishImages(p.checkpoint, st) != nil {
			os.RemoveAll(p.checkpoint)
			return err
		}
		logctx.From(ctx).Warn("checkpoint: CRIU failed after it had dumped and stopped the container; keeping its images for the next start",
			"container", h.ID, "err", err)
	}
	if !opts.LeaveRunning {
		if err := d.cleanupRuntime(ctx, h.ID); err != nil {
			return err
		}
		st.Checkpoint, st.CheckpointTCP, st.CheckpointDir = true, opts.TCPEstablished, ""
		return d.save(h, st)
	}
	return nil
}

// dumpMetaFile is the driver's part of a checkpoint, next to CRIU's images.
const dumpMetaFile = "tandem-dump.json"

// dumpMeta is what a restore needs besides CRIU's images, wherever it runs.
type dumpMeta struct {
	ID    string       `json:"id"`
	IDs   rootfs.IDMap `json:"ids"`
	TCP   bool         `json:"tcp_established"`
	Lazy  bool         `json:"lazy,omitempty"`
	LXCFS bool         `json:"lxcfs"` // the container had lxcfs's /proc files bind-mounted
	Net   *netConf     `json:"net,omitempty"`
	At    time.Time    `json:"at"`
}

// dumpImages runs `runc checkpoint` with o (work path and file locks added) into o.ImagePath,
// with the driver's metadata next to the images, and makes the images restorable (see
// prepareImages).
func (d *Driver) dumpImages(ctx context.Context, h *driver.Handle, st *instState, o runc.CheckpointOpts) error {
	return d.dumpImagesWith(ctx, h, st, o, func(ctx context.Context, o runc.CheckpointOpts) error {
		return d.runc.Checkpoint(ctx, h.ID, o)
	})
}

// dumpImagesWith is dumpImages with run running runc with the final options, under the CRIU
// deadline (guardDump): run must kill runc and criu when its ctx ends. A lazy dump's run
// returns once the page server is ready: the images but memory are written then.
func (d *Driver) dumpImagesWith(ctx context.Context, h *driver.Handle, st *instState, o runc.CheckpointOpts, run func(ctx context.Context, o runc.CheckpointOpts) error) error {
	p := d.paths(h.ID)
	meta := dumpMeta{ID: h.ID, IDs: st.IDs, TCP: o.TCPEstablished, Lazy: o.LazyPages, LXCFS: configUsesLXCFS(p.config), At: time.Now().UTC()}
	if isNetns(p.netns) {
		conf, err := snapshotNet(ctx, p.netns)
		if err != nil {
			return fmt.Errorf("checkpoint %s: read its network configuration: %w", h.ID, err)
		}
		meta.Net = conf
	}
	if err := os.MkdirAll(o.ImagePath, 0o700); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(o.ImagePath, dumpMetaFile), meta); err != nil {
		return err
	}
	os.RemoveAll(p.criuWork)
	if err := os.Mkdir(p.criuWork, 0o700); err != nil {
		return err
	}
	o.WorkPath, o.FileLocks = p.criuWork, true
	err := d.guardDump(ctx, h, func() error { return clearDumpDir(o.ImagePath) }, func(ctx context.Context, noBreakpoints bool) error {
		o.NoBreakpoints = noBreakpoints
		return run(ctx, o)
	})
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w%s", h.ID, err, criuLogSummary(filepath.Join(p.criuWork, "dump.log")))
	}
	return finishImages(o.ImagePath, st)
}

// finishImages makes a finished dump restorable into the container's user namespace.
func finishImages(dir string, st *instState) error {
	if err := disarmNotify(filepath.Join(dir, "seccomp.img")); err != nil {
		return err
	}
	return prepareImages(dir, int(st.IDs.ToHost(0)))
}

// readDumpMeta reads a checkpoint's metadata; checkpoints made before it existed get defaults.
func readDumpMeta(dir string, st *instState) (*dumpMeta, error) {
	data, err := os.ReadFile(filepath.Join(dir, dumpMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, "inventory.img")); err != nil {
			return nil, errdefs.Invalid("%s holds no checkpoint: %v", dir, err)
		}
		return &dumpMeta{ID: st.ID, IDs: st.IDs, TCP: st.CheckpointTCP, LXCFS: true}, nil
	}
	if err != nil {
		return nil, err
	}
	m := &dumpMeta{}
	if err := json.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("%s: %w", dumpMetaFile, err)
	}
	if m.ID != st.ID || m.IDs != st.IDs {
		return nil, errdefs.Invalid("the checkpoint in %s is of %s with ids %+v, not of %s with ids %+v", dir, m.ID, m.IDs, st.ID, st.IDs)
	}
	return m, nil
}

// configUsesLXCFS reports whether the config.json at path bind-mounts lxcfs's files.
func configUsesLXCFS(path string) bool {
	var s specs.Spec
	data, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(data, &s) != nil {
		return false
	}
	for _, m := range s.Mounts {
		if m.Destination == lxcfsFiles[0] {
			return true
		}
	}
	return false
}

// restore starts the container from its pending checkpoint (called by Start). The checkpoint is
// kept if the restore fails, so it can be retried or discarded.
func (d *Driver) restore(ctx context.Context, h *driver.Handle, st *instState) error {
	dir := st.CheckpointDir
	if dir == "" {
		dir = d.paths(h.ID).checkpoint
	}
	if err := d.restoreFrom(ctx, h, st, dir, nil, false); err != nil {
		return err
	}
	if st.CheckpointDir == "" {
		os.RemoveAll(dir) // ours; a migration's image directory is its caller's
	}
	st.Checkpoint, st.CheckpointTCP, st.CheckpointDir, st.Migration = false, false, "", ""
	return d.save(h, st)
}

// restoreFrom runs `runc restore` of the images in dir from a new shim, with the restore hook
// that readies the network namespace before CRIU restores sockets (nethook.go). lazy, if set,
// is the lazy-pages daemon the restore takes its memory from. The caller cleans up on failure. A
// restored container's addresses are announced (announce.go).
func (d *Driver) restoreFrom(ctx context.Context, h *driver.Handle, st *instState, dir string, lazy *lazyPages, noAddrs bool) error {
	if d.criuPath == "" {
		return errdefs.Unavailable("container %s has a checkpoint, and restoring it needs CRIU, which is not installed", h.ID)
	}
	meta, err := readDumpMeta(dir, st)
	if err != nil {
		return err
	}
	if noAddrs {
		meta.Net = nil
	}
	lxcfs := ""
	if meta.LXCFS {
		if lxcfs = d.lxcfsDir(ctx); lxcfs == "" {
			return errdefs.Unavailable("the checkpoint of %s has lxcfs's /proc files mounted, and lxcfs is not available here", h.ID)
		}
	}
	p := d.paths(h.ID)
	if lazy == nil { // a lazy restore's work dir holds the lazy-pages daemon's socket already
		os.RemoveAll(p.criuWork)
		if err := os.Mkdir(p.criuWork, 0o700); err != nil {
			return err
		}
	}
	progress.Report(ctx, 30, "restoring checkpoint")
	hook, err := d.listenNetHook(ctx, h, p, meta.Net, meta.TCP)
	if err != nil {
		return err
	}
	if err := d.writeConfigWith(&h.Spec, st, lxcfs, d.hookArgv(p)); err != nil {
		hook.close(p)
		return err
	}
	argv := d.runc.RestoreArgs(h.ID, p.bundle, p.initPid, p.consoleSock, runc.CheckpointOpts{
		ImagePath: dir, WorkPath: p.criuWork, TCPEstablished: meta.TCP, FileLocks: true, LazyPages: lazy != nil,
	})
	// Under the CRIU deadline: startShim kills the shim with runc and criu when it passes, and
	// the caller's cleanup sweeps whatever was restored.
	timeout := d.criuTimeout(dirSize(dir))
	rctx, cancel := context.WithTimeout(ctx, timeout)
	pid, err := d.startShim(rctx, h, p, argv)
	hung := errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	cancel()
	ran, herr := hook.close(p)
	uerr := hook.unlock()
	if err != nil {
		if hung {
			return errdefs.Unavailable("restore %s: criu restore did not finish in %s: killed it%s", h.ID, timeout.Round(time.Second),
				criuLastLine(filepath.Join(p.criuWork, "restore.log")))
		}
		if herr != nil {
			return fmt.Errorf("restore %s: %w", h.ID, herr)
		}
		return fmt.Errorf("restore %s: %w%s", h.ID, err, criuErrors(filepath.Join(p.criuWork, "restore.log")))
	}
	if !ran {
		// Not expected with runc 1.1 (and TCP connections would not have come back): make the
		// namespace usable the old way, after the fact.
		logctx.From(ctx).Warn("restore: "+errNoHook.Error()+"; preparing the network after the restore", "container", h.ID)
		if err := d.prepareRestoredNetns(ctx, h, p, pid, meta.Net, false); err != nil {
			return err
		}
	} else if uerr != nil {
		return fmt.Errorf("restore %s: lift the restore lock: %w", h.ID, uerr)
	}
	announce(h.ID, p.netns)
	return nil
}

// HasCheckpoint reports whether a stateful stop left a checkpoint the next Start restores.
func (d *Driver) HasCheckpoint(ctx context.Context, h *driver.Handle) (bool, error) {
	st, err := d.mustLoad(h)
	if err != nil {
		return false, err
	}
	return st.Checkpoint, nil
}

// DiscardCheckpoint makes the next Start boot afresh.
func (d *Driver) DiscardCheckpoint(ctx context.Context, h *driver.Handle) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if st.Migration != "" {
		return errdefs.Conflict("container %s is being migrated (%s)", h.ID, st.Migration)
	}
	if err := os.RemoveAll(d.paths(h.ID).checkpoint); err != nil {
		return err
	}
	st.Checkpoint, st.CheckpointTCP, st.CheckpointDir = false, false, ""
	return d.save(h, st)
}

// dirSize is the number of bytes in the files under dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, de os.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			if fi, err := de.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
