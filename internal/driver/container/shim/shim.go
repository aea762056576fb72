// Package shim is the small per-container process that outlives the daemon. It runs in its own
// session and:
//   - runs `runc create` (or `runc restore`) itself and is a child subreaper, so the container's
//     init becomes its child: init is reaped (no zombie on hosts whose PID 1 does not reap) and its
//     exit status is recorded;
//   - receives the init's console pty master from runc's console socket and holds it for the
//     container's life, copying its output to a size-capped log file and to attached clients, and
//     clients' input back to it;
//   - exits when init has exited and the console has drained.
//
// The daemon binary re-executes itself to run it (see the container package's ShimArg).
package shim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/driver/container/runc"
)

// Config is what the daemon hands the shim, as a JSON file in the container's run directory.
type Config struct {
	ID string `json:"id"`
	// Argv is the runc command that creates or restores the container, with a --pid-file of
	// PidFile and a --console-socket of ConsoleSocket.
	Argv          []string `json:"argv"`
	PidFile       string   `json:"pid_file"`
	ConsoleSocket string   `json:"console_socket"`
	AttachSocket  string   `json:"attach_socket"`
	ConsoleLog    string   `json:"console_log"`
	LogMax        int64    `json:"log_max"`   // bytes before the log rotates to .1
	ExitFile      string   `json:"exit_file"` // where init's exit is recorded
	ShimPidFile   string   `json:"shim_pid_file"`
	// SeccompSocket, if set, is the container's seccomp listenerPath: the shim answers the
	// sysinfo calls the profile sends there (see sysinfo.go).
	SeccompSocket string `json:"seccomp_socket,omitempty"`
}

// Exit is what ExitFile holds after init ended.
type Exit struct {
	Code   int       `json:"code"`             // exit code, or -1 if killed by a signal
	Signal string    `json:"signal,omitempty"` // the signal that killed it
	At     time.Time `json:"at"`
}

// ReadyFD is the descriptor (the first of cmd.ExtraFiles) on which the shim reports once: a line
// "ok <init pid>" when the container exists and its console is held, or "error <message>".
const ReadyFD = 3

// Main runs the shim with args (after the re-exec marker): "run <config file>", or the restore
// hook "netns-hook <socket>" (see hook.go). It returns the process exit code.
func Main(args []string) int {
	if len(args) > 0 && args[0] == NetnsHookArg {
		return netnsHook(args[1:], os.Stdin)
	}
	if len(args) != 2 || args[0] != "run" {
		fmt.Fprintf(os.Stderr, "shim: usage: run <config.json> (got %q)\n", args)
		return 2
	}
	ready := os.NewFile(ReadyFD, "ready")
	report := func(format string, a ...any) {
		if ready != nil {
			fmt.Fprintf(ready, format+"\n", a...)
			ready.Close()
			ready = nil
		}
	}
	cfg, err := readConfig(args[1])
	if err != nil {
		report("error %v", err)
		return 1
	}
	pid, con, err := create(cfg)
	if err != nil {
		report("error %s", oneLine(err.Error()))
		return 1
	}
	os.WriteFile(cfg.ShimPidFile, []byte(strconv.Itoa(os.Getpid())), 0o600)
	report("ok %d", pid)
	exit := waitInit(pid)
	writeExit(cfg.ExitFile, exit)
	if con != nil {
		con.drain(2 * time.Second)
	}
	os.Remove(cfg.ShimPidFile)
	return 0
}

func readConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cfg := &Config{}
	if err := json.Unmarshal(data, cfg); err != nil {
		return nil, fmt.Errorf("shim config %s: %w", path, err)
	}
	if len(cfg.Argv) == 0 || cfg.PidFile == "" {
		return nil, fmt.Errorf("shim config %s: no runc command or pid file", path)
	}
	return cfg, nil
}

// create makes this process the subreaper, runs runc and takes the console it hands over.
func create(cfg *Config) (int, *console, error) {
	// A hangup or ^C meant for a terminal the daemon had must not end the container's console.
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 0, nil, fmt.Errorf("become subreaper: %w", err)
	}
	var agent *sysinfoAgent
	if cfg.SeccompSocket != "" {
		var err error
		if agent, err = listenSysinfo(cfg.SeccompSocket); err != nil {
			return 0, nil, err
		}
		// It serves for the container's life; the process exit closes it.
	}
	var recv *consoleReceiver
	if cfg.ConsoleSocket != "" {
		var err error
		if recv, err = listenConsole(cfg.ConsoleSocket); err != nil {
			return 0, nil, err
		}
		defer recv.close()
	}
	os.Remove(cfg.PidFile)
	cmd := exec.Command(cfg.Argv[0], cfg.Argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, nil, runc.Error(runcOp(cfg.Argv), stderr.Bytes(), err)
	}
	data, err := os.ReadFile(cfg.PidFile)
	if err != nil {
		return 0, nil, fmt.Errorf("runc left no pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, nil, fmt.Errorf("bad pid file %s: %q", cfg.PidFile, data)
	}
	if agent != nil {
		agent.initPid.Store(int32(pid))
	}
	if recv == nil {
		return pid, nil, nil
	}
	master, err := recv.wait(10 * time.Second)
	if err != nil {
		return pid, nil, err
	}
	con, err := newConsole(master, cfg.ConsoleLog, cfg.LogMax)
	if err != nil {
		return pid, nil, err
	}
	if err := con.serve(cfg.AttachSocket); err != nil {
		return pid, nil, err
	}
	return pid, con, nil
}

// runcOp names the runc subcommand in argv, for error messages.
func runcOp(argv []string) string {
	for _, a := range argv[1:] {
		switch a {
		case "create", "restore", "run":
			return a
		}
	}
	return filepath.Base(argv[0])
}

// waitInit reaps children until init is reaped and returns how it ended. Other children (none are
// expected: init's orphans stay inside its pid namespace) are reaped on the way.
func waitInit(pid int) Exit {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Not our child (a subreaper was not in place): watch the pid instead.
			waitPid(pid)
			return Exit{Code: -1, At: time.Now().UTC()}
		}
		if got != pid {
			continue
		}
		e := Exit{Code: ws.ExitStatus(), At: time.Now().UTC()}
		if ws.Signaled() {
			e.Code, e.Signal = -1, unix.SignalName(ws.Signal())
		}
		return e
	}
}

// waitPid blocks until a process that is not our child exits.
func waitPid(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // already gone
	}
	defer unix.Close(fd)
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
		if err != unix.EINTR {
			return
		}
	}
}

func writeExit(path string, e Exit) {
	if path == "" {
		return
	}
	data, _ := json.Marshal(e)
	tmp := path + ".new"
	if os.WriteFile(tmp, data, 0o600) == nil {
		os.Rename(tmp, path)
	}
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }
