// Package benchkit is what the benchmarks under bench/ do alike: the command's life cycle (skip,
// timeout, Ctrl-C, exit status), a work dir that survives an incomplete cleanup, building tandem
// from this module, and waiting for a daemon to answer.
package benchkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/client"
)

// ErrSkip, wrapped in run's error, ends the benchmark with a message and exit status 0.
var ErrSkip = errors.New("skipped")

// Main runs a benchmark named name (bench/x): with a message and exit status 0 when skip gives a
// reason, otherwise run bounded by timeout. The first Ctrl-C or SIGTERM cancels run's context, so
// that it cleans up; a second one kills. run's error sets the exit status.
func Main(name string, timeout time.Duration, skip func() string, run func(context.Context) error) {
	if reason := skip(); reason != "" {
		fmt.Println(name+": skipped:", reason)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // the first Ctrl-C cleans up; a second one kills
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch err := run(ctx); {
	case err == nil:
	case errors.Is(err, ErrSkip):
		fmt.Println(name+":", err)
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, name+": interrupted:", err)
		os.Exit(130)
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(os.Stderr, "%s: took longer than -timeout %v: %v\n", name, timeout, err)
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// WorkDir makes a temporary dir, short enough for unix socket paths below it, and returns done:
// done(true) removes it, done(false) keeps it for inspection and says where it is.
func WorkDir(name, prefix string) (dir string, done func(ok bool), err error) {
	dir, err = os.MkdirTemp("", prefix)
	if err != nil {
		return "", nil, err
	}
	done = func(ok bool) {
		if ok {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintf(os.Stderr, "%s: cleanup was incomplete; left %s for inspection\n", name, dir)
		}
	}
	// Unprivileged container roots (unmapped uids) must traverse to their rootfs in a state dir.
	if err := os.Chmod(dir, 0o711); err != nil {
		done(true)
		return "", nil, err
	}
	return dir, done, nil
}

// Build runs `go build -o dir/ args...` in this module (the benchmark runs from it), with env
// added to go's environment.
func Build(ctx context.Context, dir string, env []string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(gomod)), "go.mod") {
		return fmt.Errorf("run from the tandem repository (go env GOMOD: %q, %v)", gomod, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", dir + "/"}, args...)...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %v\n%s", args, err, out)
	}
	return nil
}

// WaitDaemon waits up to 30s until the daemon c talks to answers. exited closes if it dies;
// log names its log for the error.
func WaitDaemon(ctx context.Context, c *client.Client, exited <-chan struct{}, log string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.GetServer(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("tandemd exited at start; see %s", log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tandemd did not answer within 30s: %v", err)
		}
	}
}
