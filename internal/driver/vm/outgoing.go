package vm

// Live migration, as the daemon drives it (S: source host's driver, D: destination's):
//
//	S.PrepareOutgoing(h)                 records the VM's hardware in h.DriverState; ship h to D
//	D.CanRun(h, in); D.PrepareIncoming(h, in) -> info   QEMU -incoming, paused; NBD export if mirrored
//	S.MigrateOut(h, {URI: info.URI, NBD: info.NBD})     mirror, pre-copy, switch-over; S ends postmigrate
//	D.FinishIncoming(h)                  cont: the guest runs on D from here
//	S.Release(h)                         quits S's QEMU, removes its files (not a shared disk)
//
// On a MigrateOut error the guest still runs on S: D.AbortIncoming. On a FinishIncoming error:
// D.AbortIncoming, then S.AbortOutgoing. If D cannot be reached after MigrateOut succeeded, S must
// neither Release nor AbortOutgoing until D answers (or its restarted daemon has aborted the
// instance: IncomingPending): only D knows whether the guest runs there.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
	"tandem/internal/qmp"
)

// MigrateOpts tune an outgoing live migration.
type MigrateOpts struct {
	URI string // the destination's IncomingInfo.URI
	NBD string // the destination's IncomingInfo.NBD; "" when the disk is on a shared pool
	// MaxBandwidth caps the RAM stream in bytes/s; 0 lifts QEMU's 128 MiB/s default cap.
	MaxBandwidth int64
	// MirrorBandwidth caps the disk mirror in bytes/s; 0: uncapped. QEMU counts the disk's zero
	// ranges against it too, though they cost next to nothing on the wire.
	MirrorBandwidth int64
	// DowntimeLimit is the longest pause QEMU aims for at switch-over; 0 keeps its 300 ms.
	DowntimeLimit time.Duration
	// AutoConverge throttles the vCPUs of a guest that dirties memory faster than it is sent.
	AutoConverge bool
	// MultifdChannels sends RAM over that many connections; must equal the destination's.
	MultifdChannels int
	// Progress, if set, is called a few times a second from MigrateOut's goroutine.
	Progress func(MigrationProgress)
}

// Migration phases in MigrationProgress.
const (
	PhaseDisk       = "disk"       // mirroring the root disk to the destination
	PhaseRAM        = "ram"        // pre-copy of memory while the guest runs
	PhaseSwitchover = "switchover" // guest paused: last disk writes, device state
	PhaseCompleted  = "completed"
)

// MigrationProgress is a snapshot of an outgoing migration.
type MigrationProgress struct {
	Phase            string
	Status           string // QEMU's migration status
	DiskTotal        int64  // bytes to mirror, and mirrored so far
	DiskDone         int64
	TotalBytes       int64 // guest RAM
	TransferredBytes int64 // RAM bytes sent so far
	RemainingBytes   int64
	DirtyRate        int64 // bytes/s the guest dirties
	Passes           int64 // dirty-memory sync passes
	ExpectedDowntime time.Duration
	ThrottlePercent  int64 // auto-converge's vCPU throttle
}

// MigrationResult is what QEMU measured.
type MigrationResult struct {
	Mode       string        // shared or mirror
	MirrorTime time.Duration // disk mirror until in sync (before the RAM migration starts)
	TotalTime  time.Duration // QEMU's: RAM migration start to completion
	SetupTime  time.Duration
	Downtime   time.Duration // QEMU's: guest paused on the source until the destination has it all
	RAMBytes   int64         // bytes of RAM sent
	DiskBytes  int64         // bytes the mirror covered
}

// Bounds of the steps after the guest stopped, and of undoing a migration.
const (
	switchoverTimeout = time.Minute
	rollbackTimeout   = time.Minute
	progressInterval  = 200 * time.Millisecond
)

// MigrateOut live-migrates a running VM to a destination prepared with PrepareIncoming. With opts.NBD
// it first mirrors the root disk into the destination's export and keeps it in sync (writes are
// mirrored synchronously) while RAM is copied; the mirror ends while the guest is paused for the
// switch-over. On success the source QEMU is left in postmigrate: the guest runs nowhere until the
// destination's FinishIncoming, and the source can still take it back (AbortOutgoing) until
// Release. On error or when ctx ends, the migration is cancelled and the guest keeps running here.
func (d *Driver) MigrateOut(ctx context.Context, h *driver.Handle, opts MigrateOpts) (MigrationResult, error) {
	if err := checkID(h.ID); err != nil {
		return MigrationResult{}, err
	}
	defer d.lock(h.ID)()
	p := d.paths(h.ID)
	cfg, err := loadConfig(p)
	if err != nil {
		return MigrationResult{}, err
	}
	if err := migratable(cfg); err != nil {
		return MigrationResult{}, err
	}
	m := &outgoing{opts: opts, res: MigrationResult{Mode: migShared}}
	if opts.NBD != "" {
		m.res.Mode = migMirror
		if _, err := parseAddr(opts.NBD); err != nil {
			return MigrationResult{}, err
		}
	} else if cfg.Disk == "" || h.Spec.Root != nil && !h.Spec.Root.Shared {
		return MigrationResult{}, errdefs.Invalid("vm: the root disk is in this host's instance dir, not on a shared pool: migrate it with an NBD mirror")
	}
	if _, err := parseAddr(opts.URI); err != nil {
		return MigrationResult{}, err
	}
	if err := d.shareAddrs(opts.URI, opts.NBD); err != nil {
		return MigrationResult{}, err
	}
	if d.qemuPID(p) == 0 {
		return MigrationResult{}, driver.ErrNotRunning
	}
	c, release, err := holdQMP(ctx, p)
	if err != nil {
		return MigrationResult{}, fmt.Errorf("vm: %w", err)
	}
	defer release()
	m.c = c
	st, err := c.QueryStatus(ctx)
	if err != nil {
		return MigrationResult{}, fmt.Errorf("vm: %w", err)
	}
	if st.Status != qmp.StateRunning && st.Status != qmp.StatePaused {
		return MigrationResult{}, errdefs.Conflict("vm: cannot migrate a VM that is %s", st.Status)
	}
	m.wasRunning = st.Running
	if err := m.run(ctx); err != nil {
		if rerr := m.rollback(); rerr != nil {
			return m.res, fmt.Errorf("vm: migration: %w; and the guest did not resume here: %v", err, rerr)
		}
		return m.res, fmt.Errorf("vm: migration (the guest keeps running here): %w", err)
	}
	d.dropAgent(h.ID) // the guest's agent answers on the destination now
	cfg.Outgoing, cfg.OutgoingPaused = m.res.Mode, !m.wasRunning
	if err := writeJSON(p.config, cfg); err != nil {
		return m.res, err
	}
	return m.res, nil
}

// outgoing is one MigrateOut in flight.
type outgoing struct {
	c          *qmp.Client
	opts       MigrateOpts
	events     <-chan qmp.Event
	wasRunning bool
	nodeAdded  bool // the nbd client node exists
	switched   bool // the mirror ended at pre-switchover
	res        MigrationResult
}

func (m *outgoing) mirrored() bool { return m.res.Mode == migMirror }

func (m *outgoing) run(ctx context.Context) error {
	events, unsubscribe := m.c.Subscribe(qmp.EventMigration, qmp.EventBlockJobReady,
		qmp.EventBlockJobComplete, qmp.EventBlockJobCancel)
	defer unsubscribe()
	m.events = events
	// pause-before-switchover stops at pre-switchover with the guest paused, so the mirror can end
	// while the disks are still active (after the switch-over the source's are inactivated).
	caps := map[string]bool{"events": true, "auto-converge": m.opts.AutoConverge,
		"multifd": m.opts.MultifdChannels > 0, "pause-before-switchover": m.mirrored()}
	if err := m.c.MigrateSetCapabilities(ctx, caps); err != nil {
		return err
	}
	params := map[string]any{"max-bandwidth": int64(1) << 40}
	if m.opts.MaxBandwidth > 0 {
		params["max-bandwidth"] = m.opts.MaxBandwidth
	}
	if m.opts.DowntimeLimit > 0 {
		params["downtime-limit"] = max(1, m.opts.DowntimeLimit.Milliseconds())
	}
	if m.opts.MultifdChannels > 0 {
		params["multifd-channels"] = m.opts.MultifdChannels
	}
	if err := m.c.MigrateSetParameters(ctx, params); err != nil {
		return err
	}
	if m.mirrored() {
		if err := m.mirror(ctx); err != nil {
			return fmt.Errorf("disk mirror: %w", err)
		}
	}
	progress.Report(ctx, 40, "migrating memory")
	if err := m.c.Migrate(ctx, m.opts.URI); err != nil {
		return err
	}
	return m.follow(ctx)
}

// mirror copies the whole root disk into the destination's NBD export and returns once the copy is
// in sync. write-blocking: from then on every guest write reaches both disks before it completes,
// so nothing is left to copy when the guest stops.
func (m *outgoing) mirror(ctx context.Context) error {
	a, _ := parseAddr(m.opts.NBD)
	if err := m.c.BlockdevAdd(ctx, map[string]any{"driver": "nbd", "node-name": mirrorNode,
		"server": a.flat(), "export": exportName}); err != nil {
		return err
	}
	m.nodeAdded = true
	start := time.Now()
	args := map[string]any{"job-id": mirrorNode, "device": rootNode, "target": mirrorNode,
		"sync": "full", "copy-mode": "write-blocking"}
	if m.opts.MirrorBandwidth > 0 {
		args["speed"] = m.opts.MirrorBandwidth
	}
	if err := m.c.Execute(ctx, "blockdev-mirror", args, nil); err != nil {
		return err
	}
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-m.events:
			if !ok {
				return m.closed()
			}
			j := decodeJob(ev)
			if j.Device != mirrorNode {
				continue
			}
			switch ev.Name {
			case qmp.EventBlockJobReady:
				m.res.MirrorTime, m.res.DiskBytes = time.Since(start), j.Len
				m.report(ctx, MigrationProgress{Phase: PhaseDisk, DiskTotal: j.Len, DiskDone: j.Offset})
				return nil
			case qmp.EventBlockJobComplete, qmp.EventBlockJobCancel:
				return fmt.Errorf("the mirror ended before it was in sync: %s", or(j.Error, ev.Name))
			}
		case <-tick.C:
			jobs, err := blockJobs(ctx, m.c)
			if err != nil {
				return err
			}
			j := findJob(jobs, mirrorNode)
			if j == nil {
				return errors.New("the mirror job vanished")
			}
			m.report(ctx, MigrationProgress{Phase: PhaseDisk, DiskTotal: j.Len, DiskDone: j.Offset})
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// follow watches the RAM migration to its end, ending the mirror at pre-switchover.
func (m *outgoing) follow(ctx context.Context) error {
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		var status string
		select {
		case ev, ok := <-m.events:
			if !ok {
				return m.closed()
			}
			switch ev.Name {
			case qmp.EventMigration:
				var data struct{ Status string }
				ev.Decode(&data)
				status = data.Status
			case qmp.EventBlockJobComplete, qmp.EventBlockJobCancel:
				if j := decodeJob(ev); j.Device == mirrorNode && !m.switched {
					return fmt.Errorf("the disk mirror broke off: %s", or(j.Error, ev.Name))
				}
			}
		case <-tick.C:
			info, err := m.c.QueryMigrate(ctx)
			if err != nil {
				return err
			}
			m.report(ctx, ramProgress(info))
			status = info.Status
		case <-ctx.Done():
			return ctx.Err()
		}
		switch status {
		case qmp.MigrationPreSwitchover:
			if !m.switched {
				if err := m.switchover(ctx); err != nil {
					return err
				}
			}
		case qmp.MigrationCompleted:
			return m.completed(ctx)
		case qmp.MigrationFailed, qmp.MigrationCancelled:
			info, _ := m.c.QueryMigrate(ctx)
			return fmt.Errorf("migration %s: %s", status, or(info.ErrorDesc, "no reason given"))
		}
	}
}

// switchover ends the mirror while the guest is paused, then lets QEMU send the device state.
// Cancelling a mirror that is in sync completes it: the destination's disk is the guest's last state.
func (m *outgoing) switchover(ctx context.Context) error {
	m.report(ctx, MigrationProgress{Phase: PhaseSwitchover, Status: qmp.MigrationPreSwitchover})
	ctx, cancel := context.WithTimeout(ctx, switchoverTimeout)
	defer cancel()
	if err := m.c.Execute(ctx, "block-job-cancel", map[string]any{"device": mirrorNode}, nil); err != nil {
		return fmt.Errorf("ending the disk mirror: %w", err)
	}
	for !m.switched {
		select {
		case ev, ok := <-m.events:
			if !ok {
				return m.closed()
			}
			j := decodeJob(ev)
			if j.Device != mirrorNode || ev.Name == qmp.EventMigration || ev.Name == qmp.EventBlockJobReady {
				continue
			}
			if ev.Name != qmp.EventBlockJobComplete || j.Error != "" {
				return fmt.Errorf("the disk mirror did not complete: %s", or(j.Error, ev.Name))
			}
			m.switched = true
		case <-ctx.Done():
			return fmt.Errorf("ending the disk mirror hung: %w", ctx.Err())
		}
	}
	return m.c.Execute(ctx, "migrate-continue", map[string]any{"state": qmp.MigrationPreSwitchover}, nil)
}

// completed collects QEMU's figures. They, and the run state postmigrate, settle a moment after
// the status reads completed.
func (m *outgoing) completed(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := m.c.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if st.Status == qmp.StatePostMigrate || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	info, err := m.c.QueryMigrate(ctx)
	if err != nil {
		return err
	}
	m.res.TotalTime = time.Duration(info.TotalTime) * time.Millisecond
	m.res.SetupTime = time.Duration(info.SetupTime) * time.Millisecond
	m.res.Downtime = time.Duration(info.Downtime) * time.Millisecond
	if info.RAM != nil {
		m.res.RAMBytes = info.RAM.Transferred
	}
	p := ramProgress(info)
	p.Phase = PhaseCompleted
	m.report(ctx, p)
	if m.nodeAdded {
		// The nbd node holds a connection to the destination's export, which FinishIncoming stops.
		if err := m.c.BlockdevDel(ctx, mirrorNode); err == nil {
			m.nodeAdded = false
		}
	}
	return nil
}

// rollback undoes a failed or cancelled MigrateOut: cancel the migration and the mirror, drop the
// nbd node and resume the guest if it ran before. Also right after a completed migration: the
// destination has not resumed the guest (only FinishIncoming does, after MigrateOut succeeded).
func (m *outgoing) rollback() error {
	ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
	defer cancel()
	return undoOutgoing(ctx, m.c, m.wasRunning)
}

// undoOutgoing brings the source back from any stage of an outgoing migration.
func undoOutgoing(ctx context.Context, c *qmp.Client, resume bool) error {
	for {
		info, err := c.QueryMigrate(ctx)
		if err != nil {
			return err
		}
		if !activeMigration(info.Status) {
			break
		}
		if info.Status != qmp.MigrationCancelling {
			c.MigrateCancel(ctx)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("the migration did not cancel: %w", err)
		}
	}
	for {
		jobs, err := blockJobs(ctx, c)
		if err != nil {
			return err
		}
		if findJob(jobs, mirrorNode) == nil {
			break
		}
		c.Execute(ctx, "block-job-cancel", map[string]any{"device": mirrorNode, "force": true}, nil)
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return fmt.Errorf("the disk mirror did not cancel: %w", err)
		}
	}
	if err := c.BlockdevDel(ctx, mirrorNode); err != nil && !strings.Contains(err.Error(), "Failed to find node") {
		return fmt.Errorf("removing the nbd node: %w", err)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || !resume || st.Running {
		return err
	}
	if err := c.Cont(ctx); err != nil { // also takes the disks back from a completed migration
		if strings.Contains(err.Error(), "lock") {
			return errdefs.Conflict("another QEMU holds the disk (the destination runs the guest?): %v", err)
		}
		return err
	}
	return nil
}

// AbortOutgoing takes the guest back after a completed MigrateOut whose destination did not resume
// it: call it only once the destination's QEMU is known gone or never resumed (its FinishIncoming
// failed and AbortIncoming succeeded). The guest runs here again, as before the migration.
func (d *Driver) AbortOutgoing(ctx context.Context, h *driver.Handle) error {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return err
	}
	defer unlock()
	if d.qemuPID(p) == 0 {
		// Nothing to take back: the guest's running state is lost. Clearing the mark lets Start
		// boot it afresh from its disk.
		cfg.Outgoing, cfg.OutgoingPaused = "", false
		writeJSON(p.config, cfg)
		return fmt.Errorf("vm: the source qemu is gone, and with it the guest's state (Start boots it afresh): %s", logTail(p.qemuLog))
	}
	resume := cfg.Outgoing == "" || !cfg.OutgoingPaused
	if err := withQMP(ctx, p, func(c *qmp.Client) error { return undoOutgoing(ctx, c, resume) }); err != nil {
		return fmt.Errorf("vm: taking the guest back: %w", err)
	}
	cfg.Outgoing, cfg.OutgoingPaused = "", false
	return writeJSON(p.config, cfg)
}

// Release ends the source's part after the destination's FinishIncoming succeeded: it quits the
// source QEMU and removes the instance's files here, and its disk unless that is shared. The
// daemon then forgets the instance on this host (Delete is not needed).
func (d *Driver) Release(ctx context.Context, h *driver.Handle) error {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return err
	}
	defer unlock()
	if cfg.Outgoing == "" {
		return errdefs.Conflict("vm: no completed outgoing migration to release")
	}
	if running, err := d.guestRuns(ctx, p); err != nil || running {
		return errdefs.Conflict("vm: the guest runs here (%v): not releasing", err)
	}
	return d.remove(ctx, h)
}

// cancelOrphanedMigration cancels an outgoing migration nobody follows any more (the daemon
// restarted during MigrateOut), so the guest keeps running here. A completed one is left for the
// daemon to settle with the destination.
func cancelOrphanedMigration(ctx context.Context, c *qmp.Client) error {
	info, err := c.QueryMigrate(ctx)
	if err != nil || !activeMigration(info.Status) {
		return err
	}
	st, err := c.QueryStatus(ctx)
	if err != nil {
		return err
	}
	// Paused at pre-switchover or finish-migrate means it ran when the migration began.
	resume := st.Running || st.Status == qmp.StateFinishMigrate
	return undoOutgoing(ctx, c, resume)
}

func (m *outgoing) report(ctx context.Context, p MigrationProgress) {
	if p.Status == "" {
		p.Status = p.Phase
	}
	pct, msg := 0, p.Phase
	switch p.Phase {
	case PhaseDisk:
		if p.DiskTotal > 0 {
			pct = int(40 * p.DiskDone / p.DiskTotal)
		}
		msg = fmt.Sprintf("mirroring disk: %d/%d MiB", p.DiskDone>>20, p.DiskTotal>>20)
	case PhaseRAM:
		if p.TotalBytes > 0 {
			pct = 40 + int(55*(p.TotalBytes-p.RemainingBytes)/p.TotalBytes)
		}
		msg = fmt.Sprintf("migrating memory: %d MiB sent, %d MiB left", p.TransferredBytes>>20, p.RemainingBytes>>20)
	case PhaseSwitchover:
		pct = 95
	case PhaseCompleted:
		pct = 100
	}
	progress.Report(ctx, pct, msg)
	if m.opts.Progress != nil {
		m.opts.Progress(p)
	}
}

func ramProgress(info qmp.MigrationInfo) MigrationProgress {
	p := MigrationProgress{Phase: PhaseRAM, Status: info.Status,
		ExpectedDowntime: time.Duration(info.ExpectedDowntime) * time.Millisecond,
		ThrottlePercent:  info.CPUThrottlePercentage}
	if r := info.RAM; r != nil {
		p.TotalBytes, p.TransferredBytes, p.RemainingBytes = r.Total, r.Transferred, r.Remaining
		p.DirtyRate, p.Passes = r.DirtyPagesRate*max(r.PageSize, 4096), r.DirtySyncCount
	}
	return p
}

// closed explains a monitor connection that ended under us: QEMU exited.
func (m *outgoing) closed() error {
	return fmt.Errorf("the source qemu's monitor closed: %v", m.c.Err())
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
