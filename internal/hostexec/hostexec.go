// Package hostexec runs the host's tools (ip, nft, mkfs.ext4, qemu-img, ...) the one way tandem
// runs them: found on PATH or in the sbin directories, under a deadline, in a process group of its
// own that is killed whole when the deadline passes or the caller gives up, with what the tool
// said folded into the error (all an operator will see).
package hostexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/internal/errdefs"
)

// DefaultTimeout bounds a command whose context carries no deadline: no tool call may hang the
// daemon. (A variable for the tests.)
var DefaultTimeout = 10 * time.Minute

// waitDelay is how long Wait waits for output pipes after the group was killed (a child that left
// the group may hold them).
const waitDelay = 5 * time.Second

// Look finds a tool on PATH or in the sbin directories a non-root PATH often lacks.
func Look(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errdefs.Unavailable("%s is not installed; run scripts/setup.sh", name)
}

// Cmd is one run of a tool.
type Cmd struct {
	Name  string   // a tool name (found with Look) or a path
	Args  []string //
	Stdin io.Reader
	Env   []string // added to the daemon's environment
	// Stdout and Stderr receive the output as it comes (nil: only what Output and Combined return).
	Stdout, Stderr io.Writer
}

// Command is a Cmd for name and args.
func Command(name string, args ...string) *Cmd { return &Cmd{Name: name, Args: args} }

// Run runs c, for at most ctx's deadline or DefaultTimeout; a failure's error carries its output.
func (c *Cmd) Run(ctx context.Context) error {
	var out bytes.Buffer
	return c.run(ctx, &out, &out, &out)
}

// Output runs c and returns its standard output; a failure's error carries its standard error.
func (c *Cmd) Output(ctx context.Context) ([]byte, error) {
	var out, errb bytes.Buffer
	err := c.run(ctx, &out, &errb, &errb)
	return out.Bytes(), err
}

// Combined runs c and returns its standard output and error interleaved, which a failure's error
// carries too.
func (c *Cmd) Combined(ctx context.Context) ([]byte, error) {
	var out bytes.Buffer
	err := c.run(ctx, &out, &out, &out)
	return out.Bytes(), err
}

// run sends stdout and stderr to the caller's writers (and c's own), and names said (the part of
// the output a failure's error quotes).
func (c *Cmd) run(ctx context.Context, stdout, stderr io.Writer, said *bytes.Buffer) error {
	path := c.Name
	if !strings.Contains(path, "/") {
		p, err := Look(path)
		if err != nil {
			return err
		}
		path = p
	}
	limit := DefaultTimeout
	if d, ok := ctx.Deadline(); ok {
		limit = time.Until(d)
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, limit)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, path, c.Args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	cmd.Stdin = c.Stdin
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdout, cmd.Stderr = tee(stdout, c.Stdout), tee(stderr, c.Stderr)
	err := cmd.Run()
	if err == nil {
		return nil
	}
	line := c.String()
	if cmd.Process == nil { // not started (ctx already done, or no such file)
		return &ExitError{Cmd: line, Err: err}
	}
	if ctx.Err() != nil {
		// The group is dead (Cancel), whatever the tool was doing; say so rather than "signal: killed".
		return &KilledError{Cmd: line, Limit: limit.Round(10 * time.Millisecond), Cause: ctx.Err()}
	}
	return &ExitError{Cmd: line, Err: err, Output: strings.TrimSpace(said.String())}
}

// String is the command line, with the tool's base name.
func (c *Cmd) String() string {
	return strings.TrimSpace(filepath.Base(c.Name) + " " + strings.Join(c.Args, " "))
}

func tee(a, b io.Writer) io.Writer {
	switch {
	case b == nil:
		return a
	case a == nil:
		return b
	}
	return io.MultiWriter(a, b)
}

// KilledError is a command killed (with its process group) because its context ended. It is
// context.DeadlineExceeded or context.Canceled, and errdefs.ErrCancelled.
type KilledError struct {
	Cmd   string
	Limit time.Duration // the time it had
	Cause error         // ctx.Err()
}

func (e *KilledError) Error() string {
	if errors.Is(e.Cause, context.DeadlineExceeded) {
		return fmt.Sprintf("%s: killed after its deadline (%s)", e.Cmd, e.Limit)
	}
	return fmt.Sprintf("%s: killed: %v", e.Cmd, e.Cause)
}

func (e *KilledError) Unwrap() []error { return []error{e.Cause, errdefs.ErrCancelled} }

// ExitError is a command that failed on its own, with what it said.
type ExitError struct {
	Cmd    string
	Err    error // *exec.ExitError, or why it did not start
	Output string
}

func (e *ExitError) Error() string {
	if e.Output == "" {
		return fmt.Sprintf("%s: %v", e.Cmd, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, e.Output)
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode is a failed command's exit status, or -1 (not started, killed, or no error).
func ExitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}
