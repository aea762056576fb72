package hostexec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/internal/errdefs"
)

// A command that outlives its deadline is killed with the children it started, and the error
// says so and is context.DeadlineExceeded.
func TestDeadlineKillsTheGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	err := Command("sh", "-c", "sleep 300 & echo $! > "+pidFile+"; wait").Run(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errdefs.ErrCancelled) {
		t.Fatalf("error %v: not a deadline", err)
	}
	if !strings.Contains(err.Error(), "sh -c sleep 300") || !strings.Contains(err.Error(), "killed after its deadline") {
		t.Errorf("error %q does not name the command and its deadline", err)
	}
	data, rerr := os.ReadFile(pidFile)
	if rerr != nil {
		t.Fatal(rerr)
	}
	child, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	waitGone(t, child)
}

// A command with no deadline in its context gets DefaultTimeout.
func TestNoDeadlineGetsTheDefault(t *testing.T) {
	old := DefaultTimeout
	DefaultTimeout = 300 * time.Millisecond
	defer func() { DefaultTimeout = old }()
	done := make(chan error, 1)
	go func() { done <- Command("sleep", "300").Run(context.Background()) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want the default deadline", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the command ran on without a deadline")
	}
}

func TestCancelKills(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)
	err := Command("sleep", "300").Run(ctx)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "sleep 300: killed") {
		t.Fatalf("error %v, want a kill on cancel", err)
	}
}

func TestMissingTool(t *testing.T) {
	err := Command("tandem-no-such-tool", "x").Run(t.Context())
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "tandem-no-such-tool is not installed; run scripts/setup.sh") {
		t.Fatalf("error %v", err)
	}
	if _, err := Look("tandem-no-such-tool"); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("Look: %v", err)
	}
}

// A failure carries its exit status and what the tool said; stdin reaches the tool; Output keeps
// stdout apart from stderr.
func TestOutputStdinAndFailure(t *testing.T) {
	c := Command("sh", "-c", "cat; echo oops >&2")
	c.Stdin = strings.NewReader("in\n")
	out, err := c.Output(t.Context())
	if err != nil || string(out) != "in\n" {
		t.Fatalf("output %q, %v", out, err)
	}
	out, err = Command("sh", "-c", "echo said; echo oops >&2; exit 3").Combined(t.Context())
	if ExitCode(err) != 3 || !strings.Contains(err.Error(), "oops") || !strings.Contains(string(out), "said") {
		t.Fatalf("combined %q, %v (code %d)", out, err, ExitCode(err))
	}
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Cmd != "sh -c echo said; echo oops >&2; exit 3" {
		t.Fatalf("error %#v", err)
	}
	c = Command("env")
	c.Env = []string{"TANDEM_HOSTEXEC=1"}
	if out, err := c.Output(t.Context()); err != nil || !strings.Contains(string(out), "TANDEM_HOSTEXEC=1") {
		t.Fatalf("env: %v", err)
	}
}

// waitGone waits until pid is gone or a zombie (its parent, init, reaps it in its own time), and
// fails the test if it still runs after half a minute.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return
		}
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	t.Fatalf("the command's child %d outlived the kill", pid)
}
