package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
)

// Every CRIU step (a dump, a restore) runs under a deadline. A dump that outlives it is hung:
// on some hosts compel waits forever for a stop that never comes (MIGRATION.md, "When criu
// dump hangs"). Its runner kills runc and criu with their process group; the container is then
// put back as it was (thawed, untraced, its network unlocked), and the dump is tried once more
// with hardware breakpoints off. A second hang fails with the stage named.

// Default CRIU deadline: a base, plus a second per 100 MiB of the container's memory (writing
// and reading memory pages is what grows with the container).
const (
	defaultCRIUTimeout = 20 * time.Second
	criuTimePer100MiB  = time.Second
)

// criuTimeout is the deadline of one CRIU step that moves mem bytes of memory.
func (d *Driver) criuTimeout(mem int64) time.Duration {
	return d.opts.CRIUTimeout + time.Duration(mem/(100<<20))*criuTimePer100MiB
}

// guardDump runs dump (one `runc checkpoint`, which must kill criu when its ctx ends) under
// the CRIU deadline. A dump that hangs or is cancelled leaves the container running here, as it
// was; a hang is retried once with noBreakpoints set. clean is called before the retry to
// empty what the first try wrote.
func (d *Driver) guardDump(ctx context.Context, h *driver.Handle, clean func() error, dump func(ctx context.Context, noBreakpoints bool) error) error {
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	wasPaused := status == driver.StatusPaused
	timeout := d.criuTimeout(cgroupMemory(cgroupDirs(d.cgroupsPath(h.ID))))
	for try := 1; ; try++ {
		tctx, cancel := context.WithTimeout(ctx, timeout)
		err := dump(tctx, try > 1)
		hung := errors.Is(tctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		if err == nil {
			return nil
		}
		if !hung && ctx.Err() == nil {
			return err // CRIU failed by itself, and resumed the container itself
		}
		// Killed: criu's tracees were let go with it; the rest is ours to undo.
		sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		serr := d.settleKilledDump(sctx, h, wasPaused)
		scancel()
		if serr != nil {
			return fmt.Errorf("criu dump was killed, and the container could not be put back as it was: %w (%v)", serr, err)
		}
		if !hung {
			return fmt.Errorf("criu dump cancelled (%w): killed it; the container keeps running on this host", ctx.Err())
		}
		if try == 2 {
			return errdefs.Unavailable("criu dump did not finish in %s, twice: killed it; the container keeps running on this host (%v)",
				timeout.Round(time.Second), err)
		}
		logctx.From(ctx).Warn("criu dump hung: killed it, the container runs on; trying once more without hardware breakpoints",
			"container", h.ID, "timeout", timeout, "err", err)
		if err := clean(); err != nil {
			return err
		}
	}
}

// settleKilledDump puts a container back as it was before a dump whose criu was killed: no task
// traced (the tracer's death detaches them; this waits for it), the cgroup thawed unless the
// user had paused it, the network unlocked (CRIU's drop-all tables gone, no socket left in TCP
// repair mode), and the container running.
func (d *Driver) settleKilledDump(ctx context.Context, h *driver.Handle, wasPaused bool) error {
	dirs := cgroupDirs(d.cgroupsPath(h.ID))
	for {
		traced := tracedPids(cgroupPids(dirs))
		if len(traced) == 0 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("tasks %v are still traced", traced)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if wasPaused {
		freezeCgroups(dirs, true)
	} else if err := freezeCgroups(dirs, false); err != nil {
		return err
	}
	if p := d.paths(h.ID); isNetns(p.netns) {
		if err := unlockNetnsAfterCRIU(ctx, p.netns); err != nil {
			return err
		}
	}
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	want := driver.StatusRunning
	if wasPaused {
		want = driver.StatusPaused
	}
	if status != want {
		return fmt.Errorf("the container is %s", status)
	}
	return nil
}

// cgroupDirs lists a container's cgroup directories in every hierarchy (v1 and v2).
func cgroupDirs(cgroupPath string) []string {
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + cgroupPath)
	if fi, err := os.Stat("/sys/fs/cgroup" + cgroupPath); err == nil && fi.IsDir() {
		dirs = append(dirs, "/sys/fs/cgroup"+cgroupPath)
	}
	return dirs
}

// freezeCgroups freezes or thaws the cgroups dirs (the v1 freezer or v2's cgroup.freeze,
// whichever a dir has) and waits, bounded, until they are.
func freezeCgroups(dirs []string, freeze bool) error {
	v1, v2 := "THAWED", "0"
	if freeze {
		v1, v2 = "FROZEN", "1"
	}
	for _, dir := range dirs {
		os.WriteFile(filepath.Join(dir, "freezer.state"), []byte(v1), 0o644)
		os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte(v2), 0o644)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if frozenCgroups(dirs) == freeze {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups %v: freezing=%v did not take effect", dirs, freeze)
		}
	}
}

// frozenCgroups reports whether any of dirs is frozen (or freezing).
func frozenCgroups(dirs []string) bool {
	for _, dir := range dirs {
		if data, err := os.ReadFile(filepath.Join(dir, "freezer.state")); err == nil && strings.TrimSpace(string(data)) != "THAWED" {
			return true
		}
		if data, err := os.ReadFile(filepath.Join(dir, "cgroup.freeze")); err == nil && strings.TrimSpace(string(data)) == "1" {
			return true
		}
	}
	return false
}

// tracedPids returns those of pids (and their threads) that a tracer holds.
func tracedPids(pids []int) []int {
	var traced []int
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
		for _, status := range tasks {
			if tracerPid(status) != 0 {
				traced = append(traced, pid)
				break
			}
		}
	}
	return traced
}

// tracerPid reads TracerPid from a /proc status file (0 when none, or when it is gone).
func tracerPid(statusFile string) int {
	data, err := os.ReadFile(statusFile)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// cgroupMemory is the memory a container's cgroups use now, in bytes (0 if unknown).
func cgroupMemory(dirs []string) int64 {
	for _, dir := range dirs {
		for _, f := range []string{"memory.current", "memory.usage_in_bytes"} {
			if data, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
				if n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err == nil {
					return n
				}
			}
		}
	}
	return 0
}

// clearDumpDir empties a dump's image directory for a retry, keeping the driver's metadata.
func clearDumpDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() != dumpMetaFile {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
