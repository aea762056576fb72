package vm

import (
	"context"
	"fmt"
	"os"
	"time"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/qmp"
)

// Stop bounds.
const (
	defaultStopTimeout = 30 * time.Second
	// powerdownRepeat re-presses the power button: a press before the guest's watcher runs is lost.
	powerdownRepeat = 2 * time.Second
	quitTimeout     = 5 * time.Second
)

// Stop shuts the VM down. Graceful: press the ACPI power button (again every few seconds) until
// QEMU exits or Timeout passes, then force. Force: QMP quit, then SIGKILL.
func (d *Driver) Stop(ctx context.Context, h *driver.Handle, opts driver.StopOpts) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	defer d.lock(h.ID)()
	p := d.paths(h.ID)
	pid := d.qemuPID(p)
	if pid == 0 {
		d.afterExit(ctx, h, p)
		return driver.ErrNotRunning
	}
	d.dropAgent(h.ID)
	if opts.Stateful {
		cfg, err := loadConfig(p)
		if err != nil {
			return err
		}
		if err := d.saveState(ctx, h, p, cfg); err != nil {
			return err // the guest runs on
		}
		opts.Force = true // its state is on disk: QEMU only has to go
	}
	if !opts.Force {
		timeout := opts.Timeout
		if timeout <= 0 {
			timeout = defaultStopTimeout
		}
		d.powerdown(ctx, p, pid, timeout)
	}
	err := d.forceStop(ctx, p, pid)
	d.afterExit(ctx, h, p)
	return err
}

// powerdown asks the guest to shut down and waits up to timeout for QEMU to exit.
func (d *Driver) powerdown(ctx context.Context, p paths, pid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		migrating := false
		err := withQMP(ctx, p, func(c *qmp.Client) error {
			st, err := c.QueryStatus(ctx)
			switch {
			case err != nil:
			case migratingState(st.Status):
				migrating = true // the guest runs elsewhere, or not yet: cont would start it here
				return nil
			case st.Status != qmp.StateRunning:
				c.Cont(ctx) // a paused guest cannot see the button
			}
			return c.SystemPowerdown(ctx)
		})
		if migrating {
			return
		}
		if err != nil && !alive(pid, p.qmp) {
			return
		}
		if d.waitExit(ctx, pid, p.qmp, min(powerdownRepeat, time.Until(deadline))) {
			return
		}
	}
}

// forceStop ends QEMU: quit over QMP, then SIGKILL.
func (d *Driver) forceStop(ctx context.Context, p paths, pid int) error {
	if !alive(pid, p.qmp) {
		return nil
	}
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quitTimeout)
	withQMP(qctx, p, func(c *qmp.Client) error { return c.Quit(qctx) })
	cancel()
	if d.waitExit(ctx, pid, p.qmp, quitTimeout) {
		return nil
	}
	return d.kill(pid, p.qmp)
}

// afterExit cleans up what a stopped VM leaves: swtpm, taps, sockets and pidfiles.
func (d *Driver) afterExit(ctx context.Context, h *driver.Handle, p paths) {
	if pid := readPID(p.tpmPID); pid > 0 {
		d.kill(pid, p.tpm)
	}
	if d.opts.Networks != nil {
		for _, name := range nicDevices(&h.Spec) {
			d.opts.Networks.TeardownTap(ctx, h, name)
		}
	}
	for _, f := range []string{p.qmp, p.console, p.agent, p.pidfile, p.tpm, p.tpmPID, p.consoleFIFO} {
		os.Remove(f)
	}
	d.removeCgroup(h.ID)
	setState(h, handleState{})
}

// State is Gone without instance.json, Stopped without a live QEMU, else what QMP reports.
func (d *Driver) State(ctx context.Context, h *driver.Handle) (driver.Status, error) {
	if checkID(h.ID) != nil {
		return driver.StatusGone, nil
	}
	p := d.paths(h.ID)
	if _, err := os.Stat(p.config); err != nil {
		return driver.StatusGone, nil
	}
	pid := d.qemuPID(p)
	if pid == 0 {
		return driver.StatusStopped, nil
	}
	var st qmp.StatusInfo
	err := withQMP(ctx, p, func(c *qmp.Client) (err error) {
		st, err = c.QueryStatus(ctx)
		return err
	})
	if err != nil {
		if !alive(pid, p.qmp) {
			return driver.StatusStopped, nil
		}
		return "", fmt.Errorf("vm: qemu (pid %d) runs but its monitor does not answer: %w", pid, err)
	}
	return statusOf(st.Status), nil
}

// statusOf maps QEMU run states onto the driver's.
func statusOf(s string) driver.Status {
	switch s {
	case qmp.StateRunning, qmp.StateDebug:
		return driver.StatusRunning
	case qmp.StateShutdown, qmp.StatePostMigrate:
		return driver.StatusStopped // the guest is done; only the process is left
	default: // paused, prelaunch, inmigrate, suspended, guest-panicked, io-error, ...
		return driver.StatusPaused
	}
}

// Recover re-attaches after a daemon restart: nothing is held open between calls, so it checks
// that a running VM's monitor answers and tidies up after one that died meanwhile.
func (d *Driver) Recover(ctx context.Context, h *driver.Handle) error {
	p, cfg, unlock, err := d.openLocked(h)
	if err != nil {
		return err
	}
	defer unlock()
	pid := d.qemuPID(p)
	if pid == 0 {
		d.afterExit(ctx, h, p)
		return nil
	}
	err = withQMP(ctx, p, func(c *qmp.Client) error {
		if _, err := c.QueryStatus(ctx); err != nil {
			return err
		}
		if cfg.Incoming == "" {
			return cancelOrphanedMigration(ctx, c)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("vm: re-attaching to qemu (pid %d): %w", pid, err)
	}
	setState(h, handleState{PID: pid})
	return nil
}

// Pause stops the vCPUs.
func (d *Driver) Pause(ctx context.Context, h *driver.Handle) error {
	return d.qmpRunning(ctx, h, func(c *qmp.Client) error { return c.Stop(ctx) })
}

// Resume lets the vCPUs run again.
func (d *Driver) Resume(ctx context.Context, h *driver.Handle) error {
	return d.qmpRunning(ctx, h, func(c *qmp.Client) error {
		st, err := c.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if migratingState(st.Status) {
			return errdefs.Conflict("vm: the guest is %s: FinishIncoming or AbortOutgoing resume it", st.Status)
		}
		if st.Status == qmp.StateIOError {
			return resumeAfterIOError(ctx, c)
		}
		return c.Cont(ctx)
	})
}

// migratingState says whether a run state belongs to a migration's two ends, where cont would
// resume a guest that may run on the other host.
func migratingState(s string) bool {
	switch s {
	case qmp.StateInMigrate, qmp.StatePostMigrate, qmp.StateFinishMigrate:
		return true
	}
	return false
}

func (d *Driver) qmpRunning(ctx context.Context, h *driver.Handle, fn func(*qmp.Client) error) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	defer d.lock(h.ID)()
	p := d.paths(h.ID)
	if d.qemuPID(p) == 0 {
		return driver.ErrNotRunning
	}
	if err := withQMP(ctx, p, fn); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	return nil
}

// Stats reads QEMU's CPU time and resident memory (guest RAM it touched plus QEMU's own).
func (d *Driver) Stats(ctx context.Context, h *driver.Handle) (driver.Stats, error) {
	if err := checkID(h.ID); err != nil {
		return driver.Stats{}, err
	}
	pid := d.qemuPID(d.paths(h.ID))
	if pid == 0 {
		return driver.Stats{}, driver.ErrNotRunning
	}
	cpu, rss, err := procStats(pid)
	if err != nil {
		return driver.Stats{}, errdefs.Conflict("vm: %v", err)
	}
	return driver.Stats{CPUTime: cpu, MemoryBytes: rss, Processes: 1}, nil
}
