package testenv

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The gate's own behaviour is seen from outside: each case re-runs this test binary on
// TestGateChild with an environment, and reads go test's verdict.
const childEnv = "TANDEM_TESTENV_CHILD"

func init() {
	Define("test-present", Setup, func(context.Context) error { return nil })
	Define("test-setup-absent", Setup, func(context.Context) error { return errors.New("not here") })
	Define("test-host-absent", Host, func(context.Context) error { return errors.New("not this kernel") })
	Define("test-needs", Host, func(context.Context) error { return nil }, "test-setup-absent")
}

func TestGateChild(t *testing.T) {
	names := os.Getenv(childEnv)
	if names == "" {
		t.Skip("run by TestRequire")
	}
	Require(t, strings.Split(names, ",")...)
	t.Log("REQUIRE PASSED")
}

func TestRequire(t *testing.T) {
	for _, c := range []struct {
		names string
		ci    string
		want  string // PASS, SKIP or FAIL
		says  string
	}{
		{"test-present", "", "PASS", "REQUIRE PASSED"},
		{"test-present", "true", "PASS", "REQUIRE PASSED"},
		{"test-setup-absent", "", "SKIP", "test-setup-absent: not here"},
		{"test-setup-absent", "true", "FAIL", "CI=true"},
		{"test-host-absent", "", "SKIP", "not this kernel"},
		{"test-host-absent", "true", "SKIP", "not this kernel"},
		{"test-needs", "true", "FAIL", "test-setup-absent: not here"},
		{"test-present,test-host-absent,test-setup-absent", "true", "SKIP", "not this kernel"},
		{"test-present,no-such-thing", "", "FAIL", `unknown component "no-such-thing"`},
		{"no-such-thing", "true", "FAIL", `unknown component "no-such-thing"`},
	} {
		t.Run(c.names+"/CI="+c.ci, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGateChild$", "-test.v")
			cmd.Env = append(os.Environ(), childEnv+"="+c.names, "CI="+c.ci)
			out, _ := cmd.CombinedOutput()
			if !strings.Contains(string(out), "--- "+c.want+": TestGateChild") || !strings.Contains(string(out), c.says) {
				t.Errorf("want %s saying %q, got:\n%s", c.want, c.says, out)
			}
		})
	}
}

// A component named in TANDEM_TESTENV_ABSENT is absent whatever the host has.
func TestRequireAbsentOverride(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGateChild$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"=test-present", "CI=true", absentEnv+"=test-present")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "--- FAIL: TestGateChild") || !strings.Contains(string(out), "hidden by "+absentEnv) {
		t.Errorf("want a failure naming %s, got:\n%s", absentEnv, out)
	}
}

func TestContextEndsAtDeadlineAndCleanup(t *testing.T) {
	var ctx context.Context
	t.Run("inner", func(t *testing.T) {
		ctx = Context(t, time.Hour)
		if d, ok := ctx.Deadline(); !ok || time.Until(d) > time.Hour {
			t.Errorf("deadline %v %v", d, ok)
		}
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		short := Context(t, time.Millisecond)
		<-short.Done()
		if !errors.Is(short.Err(), context.DeadlineExceeded) {
			t.Errorf("short context: %v", short.Err())
		}
	})
	if ctx.Err() == nil {
		t.Error("the context outlived its test")
	}
}

// Every component setup installs is here: under CI=true (after setup) an absent one fails, which
// names what setup broke even where no other test asks for it.
func TestSetupComponents(t *testing.T) {
	for name, c := range components {
		if c.kind == Setup && !strings.HasPrefix(name, "test-") {
			t.Run(name, func(t *testing.T) { Require(t, name) })
		}
	}
}
