package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/internal/errdefs"
)

// lookTool finds a tool on PATH or in the sbin directories a non-root PATH often lacks.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errdefs.Unavailable("%s is not installed; run scripts/setup.sh", name)
}

// run runs a tool and folds its output into the error, which is all an operator will see.
func run(ctx context.Context, name string, args ...string) (string, error) {
	path, err := lookTool(name)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return out.String(), fmt.Errorf("%s: %w", name, errors.Join(errdefs.ErrCancelled, ctx.Err()))
		}
		return out.String(), &toolError{cmd: name + " " + strings.Join(args, " "), err: err, out: strings.TrimSpace(out.String())}
	}
	return out.String(), nil
}

// toolError is a failed command with its output.
type toolError struct {
	cmd string
	err error
	out string
}

func (e *toolError) Error() string {
	if e.out == "" {
		return fmt.Sprintf("%s: %v", e.cmd, e.err)
	}
	return fmt.Sprintf("%s: %v: %s", e.cmd, e.err, e.out)
}

func (e *toolError) Unwrap() error { return e.err }

// exitCode is a failed command's exit status, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// isNoSpace tells whether err means the pool (or a quota) is full, from a syscall or a tool's words.
func isNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	s := strings.ToLower(err.Error())
	for _, w := range []string{"no space left", "disk quota exceeded", "could not allocate block", "not enough space"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// failed words the error of a step that was rolled back: one clear sentence when the pool is full.
func failed(pool, what string, err error) error {
	if se := spaceError(pool, what, err); se != err {
		return se
	}
	return fmt.Errorf("%s: %w", what, err)
}

// spaceError turns an out-of-space failure into one clear sentence; other errors pass through.
func spaceError(pool, what string, err error) error {
	if isNoSpace(err) && !errors.Is(err, errdefs.ErrInvalidArgument) {
		return errdefs.Conflict("pool %q is out of space: %s failed and was rolled back (%v)", pool, what, err)
	}
	return err
}

func isRoot() bool { return os.Geteuid() == 0 }
