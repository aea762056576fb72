package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
	"tandem/internal/qmp"
)

// IncomingOpts say how a destination receives a VM.
type IncomingOpts struct {
	// Listen is where QEMU listens for the migration stream: tcp:HOST:PORT or unix:PATH.
	Listen string
	// NBDListen is where QEMU serves the new root disk for the source's mirror (tcp:HOST:PORT or
	// unix:PATH); required unless SharedDisk.
	NBDListen string
	// SharedDisk: the root disk is a file both hosts see (a shared pool). QEMU opens it at the
	// source's path (or DiskPath) and takes its lock only when the guest resumes here.
	SharedDisk bool
	// DiskPath is, with SharedDisk, the shared file's path here when it differs from the source's;
	// without, where to make the new disk ("": the instance dir).
	DiskPath string
	// PoolDisk: DiskPath, without SharedDisk, is a root volume on this host's pool, which the
	// control plane owns (the driver replaces its contents but never deletes it).
	PoolDisk bool
	// MultifdChannels must equal the source's MigrateOpts.MultifdChannels (0: no multifd).
	MultifdChannels int
}

func (o IncomingOpts) check() error {
	if _, err := parseAddr(o.Listen); err != nil {
		return err
	}
	if o.SharedDisk != (o.NBDListen == "") {
		return errdefs.Invalid("vm: want an NBD address for a mirrored disk, and none for a shared one")
	}
	if o.NBDListen != "" {
		if _, err := parseAddr(o.NBDListen); err != nil {
			return err
		}
	}
	if o.MultifdChannels < 0 || o.MultifdChannels > 64 {
		return errdefs.Invalid("vm: %d multifd channels", o.MultifdChannels)
	}
	return nil
}

func (o IncomingOpts) diskPath(src *sourceState) string {
	if o.DiskPath != "" {
		return o.DiskPath
	}
	if o.SharedDisk {
		return src.DiskPath
	}
	return ""
}

// IncomingInfo is what the source's MigrateOut needs. A wildcard listen host (0.0.0.0) must be
// replaced by one the source reaches.
type IncomingInfo struct {
	URI string // MigrateOpts.URI
	NBD string // MigrateOpts.NBD; "" for a shared disk
}

// PrepareIncoming creates the instance the handle describes (after the source's PrepareOutgoing)
// and starts QEMU with the same virtual hardware, paused, waiting for the migration stream. With a
// mirrored disk it makes an empty disk of the same size and exports it over NBD. It leaves nothing
// behind on failure; on success the handle holds the new QEMU's pid.
func (d *Driver) PrepareIncoming(ctx context.Context, h *driver.Handle, opts IncomingOpts) (IncomingInfo, error) {
	if err := d.CanRun(ctx, h, opts); err != nil {
		return IncomingInfo{}, err
	}
	src, _ := sourceOf(h)
	defer d.lock(h.ID)()
	p := d.paths(h.ID)
	if _, err := os.Stat(p.config); err == nil {
		return IncomingInfo{}, errdefs.Exists("vm: instance %s already exists on this host", h.ID)
	}
	cfg := src.Config
	cfg.Base, cfg.Outgoing, cfg.MachineType, cfg.Disk = "", "", src.MachineType, opts.diskPath(src)
	cfg.Incoming = migMirror
	if opts.SharedDisk {
		cfg.Incoming = migShared
	} else {
		cfg.PoolDisk, cfg.DiskFormat = opts.PoolDisk, "" // a new qcow2 disk, made below
	}
	ok := false
	defer func() {
		if !ok {
			// keeps a shared disk: cfg.Incoming says so
			if err := d.remove(context.WithoutCancel(ctx), h); err != nil {
				slog.Error("vm: clean up after a failed incoming prepare", "instance", h.ID, "err", err)
			}
		}
	}()
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return IncomingInfo{}, err
	}
	if err := writeJSON(p.config, cfg); err != nil {
		return IncomingInfo{}, err
	}
	if !opts.SharedDisk {
		// Standalone: the source's base disk is not byte-identical to ours, so the mirror copies
		// the whole disk (sync=full) rather than only the overlay.
		if err := qemuImg(ctx, "create", "-q", "-f", "qcow2", cfg.diskPath(p), strconv.FormatInt(src.DiskSize, 10)); err != nil {
			return IncomingInfo{}, err
		}
	}
	if err := d.shareAddrs(opts.Listen, opts.NBDListen); err != nil {
		return IncomingInfo{}, err
	}
	progress.Report(ctx, 20, "starting qemu for the incoming migration")
	pid, c, err := d.launch(ctx, h, cfg, p, func(qc *qemucmd.Config) {
		qc.Incoming = "defer"
		qc.VCPUs, qc.MemoryMiB = src.VCPUs, src.MemoryMiB // what the source runs, whatever the spec says now
		qc.CPU = src.CPU
		for i := range qc.NICs {
			if mac := src.NICs[qc.NICs[i].ID]; mac != "" {
				qc.NICs[i].MAC = mac
			}
		}
	})
	if err != nil {
		return IncomingInfo{}, err
	}
	defer c.Close()
	setState(h, handleState{PID: pid})
	if err := d.listenIncoming(ctx, c, opts); err != nil {
		return IncomingInfo{}, fmt.Errorf("vm: preparing the incoming migration: %w", err)
	}
	ok = true
	progress.Report(ctx, 100, "waiting for the migration")
	return IncomingInfo{URI: opts.Listen, NBD: opts.NBDListen}, nil
}

// listenIncoming sets the destination's side: capabilities the source must match, the NBD export,
// then the listening socket.
func (d *Driver) listenIncoming(ctx context.Context, c *qmp.Client, opts IncomingOpts) error {
	// late-block-activate: the disk stays inactive (no lock, no writes) until cont, so the source
	// can still take the guest back if this side never resumes it.
	caps := map[string]bool{"events": true, "late-block-activate": true, "multifd": opts.MultifdChannels > 0}
	if err := c.MigrateSetCapabilities(ctx, caps); err != nil {
		return err
	}
	if opts.MultifdChannels > 0 {
		if err := c.MigrateSetParameters(ctx, map[string]any{"multifd-channels": opts.MultifdChannels}); err != nil {
			return err
		}
	}
	if opts.NBDListen != "" {
		a, _ := parseAddr(opts.NBDListen)
		if err := c.Execute(ctx, "nbd-server-start", map[string]any{"addr": a.legacy()}, nil); err != nil {
			return err
		}
		// Exporting activates the node: it is written before the migration completes.
		if err := c.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": exportName,
			"node-name": rootNode, "name": exportName, "writable": true}, nil); err != nil {
			return err
		}
	}
	return c.MigrateIncoming(ctx, opts.Listen)
}

// FinishIncoming resumes the guest here once the migration has completed (call it after the
// source's MigrateOut returned). From then on the guest runs here and the source may be released;
// on error the guest does not run here and the source may resume (AbortIncoming, AbortOutgoing).
func (d *Driver) FinishIncoming(ctx context.Context, h *driver.Handle) error {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return err
	}
	defer unlock()
	if cfg.Incoming == "" {
		return errdefs.Conflict("vm: no incoming migration to finish")
	}
	pid := d.qemuPID(p)
	if pid == 0 {
		return fmt.Errorf("vm: the incoming qemu is gone: %s", logTail(p.qemuLog))
	}
	err = withQMP(ctx, p, func(c *qmp.Client) error {
		if err := waitIncoming(ctx, c); err != nil {
			return err
		}
		if cfg.Incoming == migMirror {
			if err := c.Execute(ctx, "nbd-server-stop", nil, nil); err != nil {
				return err
			}
		}
		return c.Cont(ctx) // activates the disk: takes its lock
	})
	if err != nil {
		if !alive(pid, p.qmp) {
			return fmt.Errorf("vm: the incoming qemu is gone: %s", logTail(p.qemuLog))
		}
		return fmt.Errorf("vm: resuming the migrated guest: %w", err)
	}
	cfg.Incoming = ""
	setState(h, handleState{PID: pid})
	return writeJSON(p.config, cfg)
}

// waitIncoming waits until the migration stream has been loaded: the source reports completion a
// moment before this side has read its last bytes.
func waitIncoming(ctx context.Context, c *qmp.Client) error {
	for {
		m, err := c.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		switch m.Status {
		case qmp.MigrationCompleted:
			st, err := c.QueryStatus(ctx)
			if err != nil {
				return err
			}
			if st.Status == qmp.StatePaused {
				return nil
			}
			if st.Status == qmp.StateRunning {
				return errdefs.Conflict("vm: the guest already runs here")
			}
		case qmp.MigrationFailed:
			return fmt.Errorf("the incoming migration failed: %s", m.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the migration did not complete here (status %q): %w", m.Status, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// AbortIncoming removes an instance whose incoming migration did not finish: its QEMU, files and
// disk, but not a shared disk, which the source still uses. It refuses once the guest runs here.
func (d *Driver) AbortIncoming(ctx context.Context, h *driver.Handle) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	defer d.lock(h.ID)()
	p := d.paths(h.ID)
	cfg, err := loadConfig(p)
	if errors.Is(err, errdefs.ErrNotFound) {
		return d.remove(ctx, h) // an interrupted PrepareIncoming's leftovers, if any
	}
	if err != nil {
		return err
	}
	if cfg.Incoming == "" {
		return errdefs.Conflict("vm: no incoming migration to abort: the guest runs here")
	}
	if running, err := d.guestRuns(ctx, p); err != nil || running {
		return errdefs.Conflict("vm: the guest runs here (%v): not aborting", err)
	}
	return d.remove(ctx, h)
}

// IncomingPending says whether the instance is an unfinished incoming migration, which a daemon
// restart should AbortIncoming. A guest found running finished its move (FinishIncoming was cut
// short after cont) and is not pending.
func (d *Driver) IncomingPending(ctx context.Context, h *driver.Handle) (bool, error) {
	if err := checkID(h.ID); err != nil {
		return false, err
	}
	defer d.lock(h.ID)()
	p := d.paths(h.ID)
	cfg, err := loadConfig(p)
	if err != nil || cfg.Incoming == "" {
		return false, err
	}
	running, err := d.guestRuns(ctx, p)
	if err != nil || !running {
		return true, err
	}
	cfg.Incoming = ""
	return false, writeJSON(p.config, cfg)
}

// guestRuns says whether the instance's QEMU runs its guest (vCPUs on).
func (d *Driver) guestRuns(ctx context.Context, p paths) (bool, error) {
	pid := d.qemuPID(p)
	if pid == 0 {
		return false, nil
	}
	var st qmp.StatusInfo
	err := withQMP(ctx, p, func(c *qmp.Client) (err error) {
		st, err = c.QueryStatus(ctx)
		return err
	})
	if err != nil && !alive(pid, p.qmp) {
		return false, nil
	}
	return st.Running, err
}
