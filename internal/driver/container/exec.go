package container

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/creack/pty"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
)

// The exec types are the driver package's; the aliases keep this package's code short.
type (
	Size        = driver.TermSize
	ExecRequest = driver.ExecRequest
)

// Exec runs `runc exec` in the foreground. Without a TTY the command's stdio are pipes to the
// request's streams. With one, runc gets a pty of ours as its terminal: it puts it in raw mode,
// relays it to the pty it makes inside the container, and follows its size (SIGWINCH).
// runc's own messages go to a log file, not the command's stderr, so that a failure to run is
// told apart from the command's exit code. Cancelling ctx kills the command.
func (d *Driver) Exec(ctx context.Context, h *driver.Handle, req ExecRequest) (int, error) {
	if len(req.Cmd) == 0 {
		return -1, errors.New("exec: no command")
	}
	if err := d.wantStatus(ctx, h, driver.StatusRunning); err != nil {
		return -1, err
	}
	p := d.paths(h.ID)
	logf, err := os.CreateTemp(p.run, "exec-*.log")
	if err != nil {
		return -1, err
	}
	logPath := logf.Name()
	logf.Close()
	defer os.Remove(logPath)

	argv := d.runc.ExecArgs(h.ID, runcExecOpts(req))
	argv = append([]string{argv[0], "--log", logPath}, argv[1:]...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = shimEnv()
	var code int
	if req.TTY {
		code, err = runTTY(ctx, cmd, req)
	} else {
		code, err = runPipes(ctx, cmd, req)
	}
	if err != nil {
		return -1, err
	}
	if msg := runcLogError(logPath); msg != "" {
		return -1, fmt.Errorf("exec in %s: %s", h.ID, msg)
	}
	return code, nil
}

func runcExecOpts(req ExecRequest) runc.ExecOpts {
	cwd := req.Cwd
	if cwd == "" {
		cwd = "/"
	}
	return runc.ExecOpts{Args: req.Cmd, Env: req.Env, Cwd: cwd, TTY: req.TTY}
}

func runPipes(ctx context.Context, cmd *exec.Cmd, req ExecRequest) (int, error) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = req.Stdin, req.Stdout, req.Stderr
	// Its own process group, so a cancel kills runc and whatever it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return -1, err
	}
	stop := context.AfterFunc(ctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()
	// A stdin that never ends (a terminal) must not keep Wait waiting once the command exited.
	cmd.WaitDelay = time.Second
	return exitCode(cmd.Wait(), ctx)
}

func runTTY(ctx context.Context, cmd *exec.Cmd, req ExecRequest) (int, error) {
	size := &pty.Winsize{Rows: req.Size.Rows, Cols: req.Size.Cols}
	if size.Rows == 0 || size.Cols == 0 {
		size = &pty.Winsize{Rows: 24, Cols: 80}
	}
	ptmx, err := pty.StartWithSize(cmd, size) // runc gets the pty as stdio and controlling tty
	if err != nil {
		return -1, err
	}
	defer ptmx.Close()
	stop := context.AfterFunc(ctx, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	defer stop()
	if req.Stdin != nil {
		go io.Copy(ptmx, req.Stdin)
	}
	out := req.Stdout
	if out == nil {
		out = io.Discard
	}
	copied := make(chan struct{})
	go func() { io.Copy(out, ptmx); close(copied) }() // ends with EIO once runc is gone
	// The resizer must be gone before the deferred ptmx.Close.
	stopResize, resizerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(resizerDone)
		for {
			select {
			case s, ok := <-req.Resize: // a nil channel never delivers
				if !ok {
					return
				}
				pty.Setsize(ptmx, &pty.Winsize{Rows: s.Rows, Cols: s.Cols})
			case <-stopResize:
				return
			}
		}
	}()
	defer func() { close(stopResize); <-resizerDone }()
	werr := cmd.Wait()
	select { // the last output
	case <-copied:
	case <-time.After(2 * time.Second):
	}
	return exitCode(werr, ctx)
}

// exitCode turns runc's exit into the command's exit code; runc exits as its process did, with
// 128+n for a signal.
func exitCode(err error, ctx context.Context) (int, error) {
	if ctx.Err() != nil {
		return -1, ctx.Err()
	}
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	return -1, err
}

// runcLogError returns runc's error messages from its --log file ("" if it logged none).
func runcLogError(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var msgs []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		var e struct{ Level, Msg string }
		if json.Unmarshal(line, &e) == nil && (e.Level == "error" || e.Level == "fatal") {
			msgs = append(msgs, e.Msg)
		}
	}
	if len(msgs) == 0 {
		return ""
	}
	return fmt.Sprint(msgs)
}
