package container

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/driver"
	"tandem/internal/driver/container/shim"
)

// ShimArg is the re-exec convention: a process started with this as argv[1] is a container shim,
// and its argv[2:] are the shim's arguments. The daemon's main must call MaybeRunShim before
// anything else (flag parsing, logging setup), or point Options.ShimBinary at a binary that does.
const ShimArg = "__tandem-container-shim"

// MaybeRunShim runs the shim and exits if this process was started as one; otherwise it returns
// at once.
func MaybeRunShim() {
	if len(os.Args) > 1 && os.Args[1] == ShimArg {
		ShimMain()
	}
}

// ShimMain runs the shim with os.Args[2:] and exits the process.
func ShimMain() {
	if len(os.Args) > 2 && os.Args[2] == lazyGuardArg {
		os.Exit(lazyGuardMain(os.Args[3:]))
	}
	os.Exit(shim.Main(os.Args[2:]))
}

// startShim starts a container's shim in its own session (so it outlives the daemon), has it run
// argv (runc create or restore) and waits until it reports the container's init pid.
func (d *Driver) startShim(ctx context.Context, h *driver.Handle, p paths, argv []string) (int, error) {
	cfg := shim.Config{
		ID: h.ID, Argv: argv, PidFile: p.initPid, ConsoleSocket: p.consoleSock, AttachSocket: p.attachSock,
		ConsoleLog: p.consoleLog, LogMax: d.opts.ConsoleLogMax, ExitFile: p.exit, ShimPidFile: p.shimPid,
	}
	if interceptSysinfo(h.Spec.Config) {
		cfg.SeccompSocket = p.seccompSock
	}
	if err := writeJSON(p.shimConfig, cfg); err != nil {
		return 0, err
	}
	os.Remove(p.exit)
	r, w, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	defer r.Close()
	logf, err := os.OpenFile(p.shimLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		w.Close()
		return 0, err
	}
	cmd := exec.Command(d.opts.ShimBinary, ShimArg, "run", p.shimConfig)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w} // fd 3: shim.ReadyFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Env = shimEnv()
	err = cmd.Start()
	w.Close()
	logf.Close()
	if err != nil {
		return 0, fmt.Errorf("start shim: %w", err)
	}
	// The daemon reaps its own shims; after a daemon restart the shim's parent is init.
	go cmd.Wait()

	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		got <- result{strings.TrimSpace(line), err}
	}()
	select {
	case res := <-got:
		if pidStr, ok := strings.CutPrefix(res.line, "ok "); ok {
			return strconv.Atoi(pidStr)
		}
		if msg, ok := strings.CutPrefix(res.line, "error "); ok {
			return 0, fmt.Errorf("%s", msg)
		}
		data, _ := os.ReadFile(p.shimLog)
		return 0, fmt.Errorf("shim exited without a report (%v): %s", res.err, lastLines(string(data), 5))
	case <-ctx.Done():
		// The shim and the runc it runs share the shim's process group; the container's init
		// is in a session of its own, and the caller's cleanup deletes it.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return 0, ctx.Err()
	}
}

// shimEnv gives the shim (and the runc and criu it runs) a PATH with the sbin directories.
func shimEnv() []string {
	env := os.Environ()
	for i, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			env[i] = e + ":/usr/local/sbin:/usr/sbin:/sbin"
			return env
		}
	}
	return append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

// shimPid returns the pid of a container's live shim, or 0.
func shimPid(p paths) int {
	pid := readPid(p.shimPid)
	if pid <= 0 {
		return 0
	}
	// Make sure the pid is still a shim (and not a recycled pid).
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), ShimArg) || !strings.Contains(string(cmdline), p.shimConfig) {
		return 0
	}
	return pid
}

// waitShimExit waits (bounded) for a shim to finish after its container stopped, so that its
// console log is complete; a shim that hangs is killed.
func waitShimExit(p paths, d time.Duration) {
	pid := shimPid(p)
	if pid == 0 {
		return
	}
	if !waitPidExit(pid, d) {
		syscall.Kill(pid, syscall.SIGKILL)
		waitPidExit(pid, time.Second)
	}
}

// waitPidExit waits up to d for a process (not necessarily our child) to exit; it reports
// whether it did.
func waitPidExit(pid int, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return true // ESRCH: gone
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(d)
	for {
		ms := max(0, int(time.Until(deadline).Milliseconds()))
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		if n > 0 {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}
