package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"tandem/internal/qmp"
)

// spawn starts a helper (QEMU, swtpm) in its own session so that it outlives the daemon and a
// signal to the daemon's process group does not reach it. Its output goes to logPath. While this
// process lives it reaps the child; the returned channel closes when the child has exited.
// It runs as Options.User when one is set.
func (d *Driver) spawn(bin string, args []string, logPath string) (int, <-chan struct{}, error) {
	return d.spawnAs(d.cred, bin, args, logPath)
}

// spawnAs is spawn as the user cred names (nil: the daemon's).
func (d *Driver) spawnAs(cred *syscall.Credential, bin string, args []string, logPath string) (int, <-chan struct{}, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, nil, err
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "== %s %s\n", time.Now().Format(time.RFC3339), bin)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	pid := cmd.Process.Pid
	done := make(chan struct{})
	d.mu.Lock()
	d.exits[pid] = done
	d.mu.Unlock()
	go func() {
		cmd.Wait()
		d.mu.Lock()
		delete(d.exits, pid)
		d.mu.Unlock()
		close(done)
	}()
	return pid, done, nil
}

// alive says whether pid is a live process whose command line contains marker (a socket path only
// that instance uses), so a recycled pid is not mistaken for our QEMU. A zombie is dead: processes
// orphaned by a daemon restart may never be reaped (PID 1 on the build machines does not reap).
func alive(pid int, marker string) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && bytes.Contains(cmdline, []byte(marker))
}

// readPID reads a pidfile; 0 if there is none.
func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// qemuPID returns the pid of the instance's running QEMU, or 0.
func (d *Driver) qemuPID(p paths) int {
	if pid := readPID(p.pidfile); alive(pid, p.qmp) {
		return pid
	}
	return 0
}

// waitExit waits until pid (identified by marker) is gone, up to timeout or ctx.
func (d *Driver) waitExit(ctx context.Context, pid int, marker string, timeout time.Duration) bool {
	d.mu.Lock()
	done := d.exits[pid]
	d.mu.Unlock()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if done == nil && !alive(pid, marker) {
			return true
		}
		select {
		case <-done:
			return true
		case <-tick.C:
		case <-deadline.C:
			return !alive(pid, marker)
		case <-ctx.Done():
			return !alive(pid, marker)
		}
	}
}

// kill sends SIGKILL and waits briefly for the process to go.
func (d *Driver) kill(pid int, marker string) error {
	if !alive(pid, marker) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if !d.waitExit(context.Background(), pid, marker, 10*time.Second) {
		return fmt.Errorf("vm: pid %d survived SIGKILL for 10s", pid)
	}
	return nil
}

// dialQMP connects to the instance's monitor. QEMU serves one QMP client at a time; a second
// client waits in the listen backlog until the first hangs up, so every use is short and bounded.
func dialQMP(ctx context.Context, p paths) (*qmp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return qmp.Dial(ctx, p.qmp)
}

// held are monitor connections a long operation (a migration) keeps open, by socket path. QEMU
// serves one QMP client at a time, so short calls borrow the held one rather than queue behind it.
var held sync.Map // qmp socket path -> *qmp.Client

// holdQMP dials the instance's monitor and lends it to withQMP until release.
func holdQMP(ctx context.Context, p paths) (*qmp.Client, func(), error) {
	c, err := dialQMP(ctx, p)
	if err != nil {
		return nil, nil, err
	}
	held.Store(p.qmp, c)
	return c, func() {
		held.CompareAndDelete(p.qmp, c)
		c.Close()
	}, nil
}

// withQMP runs fn on the held connection, or else on a fresh one.
func withQMP(ctx context.Context, p paths, fn func(*qmp.Client) error) error {
	if c, ok := held.Load(p.qmp); ok {
		return fn(c.(*qmp.Client))
	}
	c, err := dialQMP(ctx, p)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// waitQMP waits for a just-started QEMU's monitor, failing fast if QEMU exits (its log says why)
// and with "hung" if it neither answers nor exits in time.
func waitQMP(ctx context.Context, p paths, exited <-chan struct{}, timeout time.Duration) (*qmp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if _, err := os.Stat(p.qmp); err == nil {
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := qmp.Dial(dctx, p.qmp)
			dcancel()
			if err == nil {
				return c, nil
			}
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("vm: qemu exited at start-up: %s", logTail(p.qemuLog))
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: qemu hung: its monitor did not answer within %v: %s", timeout, logTail(p.qemuLog))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// logTail returns the last lines of a log for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// procStats reads a process's CPU time and resident memory.
func procStats(pid int) (cpu time.Duration, rss uint64, err error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:])) // f[0] is the state, field 3 of stat(5)
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("vm: short /proc/%d/stat", pid)
	}
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	cpu = time.Duration(utime+stime) * time.Second / 100 // USER_HZ is 100 on Linux
	rssPages, _ := strconv.ParseUint(f[21], 10, 64)
	return cpu, rssPages * uint64(os.Getpagesize()), nil
}
