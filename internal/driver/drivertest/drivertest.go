// Package drivertest is the conformance suite every driver passes, the fake one included. A driver's
// own test calls Run with a factory; tests that need root or a component skip in that driver's test.
package drivertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
)

// Harness tells the suite how to make a driver and a spec it can run.
type Harness struct {
	// New returns a fresh driver; called once per subtest.
	New func(t *testing.T) driver.Driver
	// Spec returns a spec the driver can create and start (an image it has, etc).
	Spec func(t *testing.T, name string) *driver.Spec
	// Timeout bounds each subtest; real drivers boot slower than the fake.
	Timeout time.Duration
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	if h.Timeout == 0 {
		h.Timeout = 30 * time.Second
	}
	tests := []struct {
		name string
		fn   func(context.Context, *testing.T, driver.Driver, *driver.Spec)
	}{
		{"Info", testInfo},
		{"Lifecycle", testLifecycle},
		{"DeleteIsIdempotent", testDeleteIdempotent},
		{"UnknownIsGone", testUnknownIsGone},
		{"RecoverKeepsRunning", testRecoverKeepsRunning},
		{"Pause", testPause},
		{"ForceStop", testForceStop},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), h.Timeout)
			defer cancel()
			d := h.New(t)
			spec := h.Spec(t, fmt.Sprintf("conform%d", i))
			if spec.ID == "" {
				spec.ID = uuid.NewString()
			}
			tc.fn(ctx, t, d, spec)
		})
	}
}

func testInfo(ctx context.Context, t *testing.T, d driver.Driver, _ *driver.Spec) {
	info := d.Info(ctx)
	if info.Name == "" || info.Version == "" {
		t.Fatalf("Info has no name or version: %+v", info)
	}
	if !info.Available {
		t.Fatalf("driver not available: %s", info.Reason)
	}
	_, isPauser := d.(driver.Pauser)
	if isPauser != slices.Contains(info.Capabilities, driver.CapPause) {
		t.Errorf("pause capability %v does not match Pauser implementation %v", info.Capabilities, isPauser)
	}
}

func create(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) *driver.Handle {
	t.Helper()
	h, err := d.Create(ctx, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if h.ID != spec.ID {
		t.Fatalf("handle id %q, spec id %q", h.ID, spec.ID)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		d.Stop(cctx, h, driver.StopOpts{Force: true})
		if err := d.Delete(cctx, h); err != nil {
			t.Errorf("cleanup Delete: %v", err)
		}
	})
	return h
}

func wantState(ctx context.Context, t *testing.T, d driver.Driver, h *driver.Handle, want driver.Status) {
	t.Helper()
	got, err := d.State(ctx, h)
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	if got != want {
		t.Fatalf("state %s, want %s", got, want)
	}
}

func testLifecycle(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) {
	h := create(ctx, t, d, spec)
	wantState(ctx, t, d, h, driver.StatusStopped)
	if err := d.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusRunning)
	if err := d.Start(ctx, h); err == nil {
		t.Error("Start of a running instance succeeded")
	}
	if err := d.Stop(ctx, h, driver.StopOpts{Timeout: 20 * time.Second}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusStopped)
	if err := d.Stop(ctx, h, driver.StopOpts{}); !errors.Is(err, driver.ErrNotRunning) {
		t.Errorf("Stop of a stopped instance: want ErrNotRunning, got %v", err)
	}
	// A second start works: stop leaves the instance reusable.
	if err := d.Start(ctx, h); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusRunning)
	if err := d.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := d.Delete(ctx, h); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusGone)
}

func testDeleteIdempotent(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) {
	h := create(ctx, t, d, spec)
	if err := d.Delete(ctx, h); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := d.Delete(ctx, h); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
}

// A handle the driver never created (an interrupted create) is Gone and can be deleted.
func testUnknownIsGone(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) {
	h := &driver.Handle{ID: uuid.NewString(), Spec: *spec}
	wantState(ctx, t, d, h, driver.StatusGone)
	if err := d.Delete(ctx, h); err != nil {
		t.Fatalf("Delete of a never-created instance: %v", err)
	}
}

func testRecoverKeepsRunning(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) {
	h := create(ctx, t, d, spec)
	if err := d.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := d.Recover(ctx, h); err != nil {
		t.Fatalf("Recover: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusRunning)
}

func testPause(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) {
	p, ok := d.(driver.Pauser)
	if !ok {
		t.Skip("driver cannot pause")
	}
	h := create(ctx, t, d, spec)
	if err := d.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := p.Pause(ctx, h); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusPaused)
	if err := p.Resume(ctx, h); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusRunning)
	// A paused instance can be stopped.
	p.Pause(ctx, h)
	if err := d.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
		t.Fatalf("Stop of a paused instance: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusStopped)
}

func testForceStop(ctx context.Context, t *testing.T, d driver.Driver, spec *driver.Spec) {
	h := create(ctx, t, d, spec)
	if err := d.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	start := time.Now()
	if err := d.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
		t.Fatalf("force Stop: %v", err)
	}
	wantState(ctx, t, d, h, driver.StatusStopped)
	t.Logf("force stop took %v", time.Since(start))
}
