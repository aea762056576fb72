package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"tandem/internal/errdefs"
	"tandem/internal/hostexec"
)

// run runs a tool (LC_ALL=C: its words are matched) and folds its output into the error, which
// is all an operator will see; a cancelled or timed-out one is killed and is errdefs.ErrCancelled.
func run(ctx context.Context, name string, args ...string) (string, error) {
	c := hostexec.Command(name, args...)
	c.Env = []string{"LC_ALL=C"}
	out, err := c.Combined(ctx)
	return string(out), err
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
