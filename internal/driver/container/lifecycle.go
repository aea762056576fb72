package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
	"tandem/internal/driver/container/shim"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// defaultStopTimeout is the graceful budget when StopOpts gives none.
const defaultStopTimeout = 30 * time.Second

// State maps runc's view: running, paused (or pausing) as such; created (a start cut short),
// stopped and unknown-to-runc as Stopped; no bundle as Gone. It reads files (observe), running
// no process.
func (d *Driver) State(ctx context.Context, h *driver.Handle) (driver.Status, error) {
	if err := checkID(h.ID); err != nil {
		return "", err
	}
	st, err := d.load(h.ID)
	if err != nil {
		return "", err
	}
	if st == nil {
		return driver.StatusGone, nil
	}
	status, _ := d.observe(h.ID)
	return status, nil
}

// Start boots the container (or restores it, after a stateful stop): the shim runs `runc create`,
// the network namespace is bind-mounted and handed to PrepareNetwork, then `runc start` runs init.
func (d *Driver) Start(ctx context.Context, h *driver.Handle) (err error) {
	if err := d.available(); err != nil {
		return err
	}
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if status, err := d.State(ctx, h); err != nil {
		return err
	} else if status == driver.StatusRunning || status == driver.StatusPaused {
		return errdefs.Conflict("container %s is already %s", h.ID, status)
	}
	if st.Migration == migMoved || st.Migration == migLazy || st.Migration == migDumping {
		return errdefs.Conflict("container %s is moving or has moved to another host (%s)", h.ID, st.Migration)
	}
	// What a previous run left (a created-but-not-started container, a netns, sockets).
	if err := d.cleanupRuntime(ctx, h.ID); err != nil {
		return err
	}
	p := d.paths(h.ID)
	if err := os.MkdirAll(p.run, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if cerr := d.cleanupRuntime(cctx, h.ID); cerr != nil {
				logctx.From(ctx).Error("clean up after a failed start", "container", h.ID, "err", cerr)
			}
		}
	}()
	if err := lockBundle(p, int(st.IDs.ToHost(0))); err != nil {
		return err
	}
	if h.Spec.Root != nil {
		progress.Report(ctx, 5, "mounting the root disk")
		if err := d.readyRoot(ctx, h, st, false); err != nil {
			return err
		}
	}
	progress.Report(ctx, 10, "writing container config")
	if err := d.writeConfig(&h.Spec, st, d.lxcfsDir(ctx)); err != nil {
		return err
	}
	if st.Checkpoint {
		return d.restore(ctx, h, st)
	}
	progress.Report(ctx, 30, "creating container")
	pid, err := d.startShim(ctx, h, p, d.runc.CreateArgs(h.ID, p.bundle, p.initPid, p.consoleSock))
	if err != nil {
		return fmt.Errorf("create container: %w", err)
	}
	if err := bindNetns(pid, p.netns); err != nil {
		return err
	}
	if !st.IDs.Identity() {
		if err := delegateCgroup(d.cgroupsPath(h.ID), st.IDs.Base); err != nil {
			return err
		}
	}
	if d.opts.PrepareNetwork != nil {
		if err := d.opts.PrepareNetwork(ctx, h, p.netns); err != nil {
			return fmt.Errorf("prepare network: %w", err)
		}
	}
	progress.Report(ctx, 70, "starting init")
	if err := d.runc.Start(ctx, h.ID); err != nil {
		return err
	}
	return d.initSurvives(ctx, p, pid)
}

// initSettle is how long a starting init must live for Start to succeed: an init that cannot
// run (systemd without a usable cgroup, a broken /sbin/init) dies within it. Every start waits
// it out, so it is kept short: a second here made a launch 3x slower than plain runc's.
var initSettle = 300 * time.Millisecond

// initSurvives fails the start when init dies within initSettle, with how it ended and the
// console's last lines, which say why; Start's rollback then removes what remains.
func (d *Driver) initSurvives(ctx context.Context, p paths, pid int) error {
	if !waitCtx(ctx, pid, initSettle) {
		return ctx.Err() // alive (nil), or the start was cancelled
	}
	waitShimExit(p, 3*time.Second) // the shim records the exit and drains the console first
	how := "exited"
	var exit shim.Exit
	if data, err := os.ReadFile(p.exit); err == nil && json.Unmarshal(data, &exit) == nil {
		how = fmt.Sprintf("exited with code %d", exit.Code)
		if exit.Signal != "" {
			how = "was killed by " + exit.Signal
		}
	}
	console := "(the console printed nothing)"
	if data, err := os.ReadFile(p.consoleLog); err == nil && len(bytes.TrimSpace(data)) > 0 {
		console = "console: " + lastLines(stripControl(string(data)), 10)
	}
	return fmt.Errorf("init %s at start; %s", how, console)
}

// Stop shuts the container down: init gets the image's shutdown signal (busybox: SIGUSR2 is
// poweroff; systemd: SIGRTMIN+3), then SIGKILL after the timeout; Force kills at once; Stateful
// checkpoints it with CRIU so that the next Start restores it. The runc container, its cgroup
// and the network namespace are then removed; the bundle stays.
func (d *Driver) Stop(ctx context.Context, h *driver.Handle, opts driver.StopOpts) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	status, pid := d.observe(h.ID)
	if status == driver.StatusStopped {
		if err := d.cleanupRuntime(ctx, h.ID); err != nil {
			return err
		}
		return driver.ErrNotRunning
	}
	if st.Migration == migLazy {
		return errdefs.Conflict("container %s is frozen for a lazy migration: commit or abort it", h.ID)
	}
	if opts.Stateful {
		return d.checkpoint(ctx, h, st, CheckpointOpts{TCPEstablished: true})
	}
	if status != driver.StatusRunning { // a frozen init can neither handle a signal nor die
		if err := d.runc.Resume(ctx, h.ID); err != nil {
			return err
		}
	}
	if !opts.Force {
		timeout := opts.Timeout
		if timeout <= 0 {
			timeout = defaultStopTimeout
		}
		sig, err := parseSignal(st.ShutdownSignal)
		if err != nil {
			return err
		}
		progress.Report(ctx, 10, "asking init to shut down")
		// Repeated: an init that has not set up its handlers yet (just started) ignores the
		// signal, as a namespace's PID 1 does with any signal it does not handle.
		for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
			if err := d.runc.Kill(ctx, h.ID, strconv.Itoa(int(sig))); err != nil {
				if waitPidExit(pid, 0) {
					break // it ended meanwhile ("container not running")
				}
				return err
			}
			if waitCtx(ctx, pid, min(2*time.Second, time.Until(deadline))) {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	if !waitPidExit(pid, 0) {
		progress.Report(ctx, 60, "killing")
		if err := d.runc.Kill(ctx, h.ID, "KILL"); err != nil && !waitPidExit(pid, 0) {
			return err
		}
		if !waitCtx(ctx, pid, 10*time.Second) {
			return fmt.Errorf("container %s: init (pid %d) did not die after SIGKILL", h.ID, pid)
		}
	}
	return d.cleanupRuntime(ctx, h.ID)
}

// waitCtx waits for pid to exit for at most d or until ctx ends; it reports whether it exited.
func waitCtx(ctx context.Context, pid int, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		d = time.Until(dl)
	}
	return waitPidExit(pid, d)
}

// cleanupRuntime removes what a stopped container leaves: runc's state and cgroup, the shim
// (it exits by itself when init is gone), the network namespace mount and the run files. The
// console log (in the bundle) stays.
func (d *Driver) cleanupRuntime(ctx context.Context, id string) error {
	p := d.paths(id)
	if err := d.runc.Delete(ctx, id, true); err != nil {
		return err
	}
	if err := sweepCgroup(d.cgroupsPath(id)); err != nil {
		return err
	}
	waitShimExit(p, 3*time.Second)
	if err := unmountNetns(p.netns); err != nil {
		return err
	}
	// A runc restore or checkpoint killed midway (a cancelled context) leaves CRIU's mounts.
	unmountUnder(p.criuWork, filepath.Join(d.runc.Root, id))
	// A migration's last copy of the rootfs runs after the dump stopped the container.
	if st, _ := d.load(id); st == nil || st.Migration == "" || st.Migration == migMoved {
		if err := releaseRoot(p); err != nil {
			return err
		}
	}
	for _, f := range []string{p.initPid, p.consoleSock, p.attachSock, p.seccompSock, p.shimConfig, p.shimPid, p.netnsHook, p.criuConf} {
		os.Remove(f)
	}
	return nil
}

// Recover re-attaches after a daemon restart. A running container needs nothing from the daemon
// (its shim holds the console and reaps init); what a container that ended meanwhile left is
// cleaned up; a missing network namespace mount of a running container is restored.
func (d *Driver) Recover(ctx context.Context, h *driver.Handle) error {
	st, err := d.load(h.ID)
	if err != nil || st == nil {
		return err
	}
	data, _ := os.ReadFile(d.paths(h.ID).state)
	h.DriverState = data
	if st.Migration == migDumping {
		if err := d.settleDumping(ctx, h, st); err != nil {
			return err
		}
	}
	if _, inFlight := d.lazyDumps.Load(h.ID); st.Migration == migLazy && !inFlight {
		// A lazy dump lost with the daemon: its proxy's reset made CRIU resume the container,
		// unless the transfer had completed.
		if err := d.recoverLazy(ctx, h, st); err != nil && !errors.Is(err, errdefs.ErrConflict) {
			return err
		}
	}
	rs, err := d.runc.State(ctx, h.ID)
	if errors.Is(err, runc.ErrNotExist) {
		return d.cleanupRuntime(ctx, h.ID)
	}
	if err != nil {
		return err
	}
	switch rs.Status {
	case runc.StatusRunning, runc.StatusPaused, "pausing":
		p := d.paths(h.ID)
		if !isNetns(p.netns) {
			if err := bindNetns(rs.Pid, p.netns); err != nil {
				return err
			}
		}
		if shimPid(p) == 0 {
			logctx.From(ctx).Warn("container runs but its shim is gone: no console until it restarts", "container", h.ID)
		}
		return nil
	}
	return d.cleanupRuntime(ctx, h.ID)
}
