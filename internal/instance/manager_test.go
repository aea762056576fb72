package instance

import (
	"context"
	"errors"
	"math/rand"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/driver/fake"
	"tandem/internal/errdefs"
	"tandem/internal/events"
	"tandem/internal/operations"
	"tandem/internal/store"
)

type harness struct {
	t   *testing.T
	dir string
	st  *store.Store
	ops *operations.Manager
	drv *fake.Driver
	m   *Manager
}

// newHarness builds a control plane over a fake driver persisted in dir (a "host" whose instances
// outlive the manager, as real ones outlive the daemon).
func newHarness(t *testing.T, dir string, delay time.Duration) *harness {
	t.Helper()
	return newHarnessWith(t, dir, delay, func(d *fake.Driver) driver.Driver { return d })
}

// newHarnessWith is newHarness with the fake wrapped (capabilities added) by wrap.
func newHarnessWith(t *testing.T, dir string, delay time.Duration, wrap func(*fake.Driver) driver.Driver) *harness {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	hub := events.NewHub()
	ops := operations.NewManager(st, hub)
	drv, _ := fake.New(fake.Options{Dir: filepath.Join(dir, "fake"), Delay: delay})
	reg := driver.NewRegistry()
	reg.Register("fake", wrap(drv), api.TypeContainer, api.TypeVM)
	h := &harness{t: t, dir: dir, st: st, ops: ops, drv: drv, m: NewManager(st, reg, ops, hub, nil)}
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	h.ops.Shutdown(5 * time.Second)
	h.st.Close()
}

func (h *harness) wait(op *api.Operation, err error) *api.Operation {
	h.t.Helper()
	if err != nil {
		h.t.Fatal(err)
	}
	done, err := h.ops.Wait(context.Background(), op.ID, 20*time.Second)
	if err != nil || !done.Done() {
		h.t.Fatalf("operation %s did not finish: %+v %v", op.ID, done, err)
	}
	return done
}

func (h *harness) launch(name string) {
	h.t.Helper()
	op := h.wait(h.m.Create(context.Background(), api.InstancesPost{Name: name, Image: "busybox", Start: true}))
	if op.Status != api.OpSuccess {
		h.t.Fatalf("launch %s: %+v", name, op)
	}
}

// 50 goroutines start, stop and delete one instance at once. Each request either runs or is refused
// with 409; at the end the store and the driver agree.
func TestConcurrentOperationsOnOneInstance(t *testing.T) {
	h := newHarness(t, t.TempDir(), 0)
	h.launch("c1")
	// The launch's operation ends a moment before it lets go of the instance's lock: under load
	// all 50 could meet that lock and be refused.
	for deadline := time.Now().Add(10 * time.Second); h.m.holder("c1") != "" && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ops []*api.Operation
	refused := 0
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var op *api.Operation
			var err error
			switch rand.Intn(3) {
			case 0:
				op, err = h.m.ChangeState(ctx, "c1", api.InstanceStatePut{Action: api.ActionStart})
			case 1:
				op, err = h.m.ChangeState(ctx, "c1", api.InstanceStatePut{Action: api.ActionStop, Force: true})
			default:
				op, err = h.m.Delete(ctx, "c1", i%2 == 0)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if !errors.Is(err, errdefs.ErrConflict) && !errors.Is(err, errdefs.ErrNotFound) {
					t.Errorf("unexpected error kind: %v", err)
				}
				refused++
				return
			}
			ops = append(ops, op)
		}(i)
	}
	wg.Wait()
	for _, op := range ops {
		h.wait(op, nil)
	}
	t.Logf("%d operations ran, %d refused", len(ops), refused)
	if len(ops) == 0 {
		t.Fatal("no operation ran")
	}
	rec, err := h.st.GetInstance("c1")
	if errors.Is(err, errdefs.ErrNotFound) {
		if h.drv.Count() != 0 {
			t.Fatal("instance deleted from the store but not from the driver")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	inst, _ := h.m.Get(ctx, "c1")
	st, _ := h.drv.State(ctx, rec.Handle)
	if rec.Pending != "" || h.drv.Count() != 1 || inst.Status != apiStatus(st) {
		t.Fatalf("inconsistent: record %+v, driver %s, %d driver instances", rec, st, h.drv.Count())
	}
	wantPower := map[driver.Status]string{driver.StatusRunning: api.PowerRunning, driver.StatusStopped: api.PowerStopped}[st]
	if rec.Desired.Power != wantPower {
		t.Fatalf("desired %s but driver says %s", rec.Desired.Power, st)
	}
}

// A create cancelled half-way leaves no record and nothing in the driver.
func TestCancelledCreateIsRolledBack(t *testing.T) {
	h := newHarness(t, t.TempDir(), time.Hour)
	ctx := context.Background()
	op, err := h.m.Create(ctx, api.InstancesPost{Name: "c1", Image: "busybox"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	h.ops.Cancel(op.ID)
	if done := h.wait(op, nil); done.Status != api.OpCancelled {
		t.Fatalf("create: %+v", done)
	}
	if _, err := h.st.GetInstance("c1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("cancelled create left a record: %v", err)
	}
	if h.drv.Count() != 0 {
		t.Fatal("cancelled create left driver state")
	}
}

func TestRecovery(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, dir, 0)
	h.launch("runs")      // running, desired running: left alone
	h.launch("restarted") // desired running but found stopped: started again
	h.launch("stopped")
	h.wait(h.m.ChangeState(context.Background(), "stopped", api.InstanceStatePut{Action: api.ActionStop}))
	h.launch("halfdeleted")
	h.launch("halfcreated")
	ctx := context.Background()

	// Simulate what a SIGKILLed daemon leaves: an instance that stopped behind our back, a delete and
	// a create cut short.
	rec, _ := h.st.GetInstance("restarted")
	h.drv.Stop(ctx, rec.Handle, driver.StopOpts{Force: true})
	h.st.UpdateInstance("halfdeleted", func(r *store.InstanceRecord) error { r.Pending = store.PendingDelete; return nil })
	h.st.UpdateInstance("halfcreated", func(r *store.InstanceRecord) error { r.Pending = store.PendingCreate; return nil })
	h.close()

	h2 := newHarness(t, dir, 0)
	startsBefore := startsOf(t, h2, "runs")
	if err := h2.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		inst, _ := h2.m.Get(ctx, "restarted")
		if inst.Status == api.StatusRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance that should run was not started: %+v", inst)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got, _ := h2.m.Get(ctx, "runs"); got.Status != api.StatusRunning || startsOf(t, h2, "runs") != startsBefore {
		t.Fatalf("running instance was touched: %+v", got)
	}
	if got, _ := h2.m.Get(ctx, "stopped"); got.Status != api.StatusStopped {
		t.Fatalf("stopped instance: %+v", got)
	}
	for _, name := range []string{"halfdeleted", "halfcreated"} {
		if _, err := h2.st.GetInstance(name); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s still recorded: %v", name, err)
		}
	}
	if h2.drv.Count() != 3 {
		t.Fatalf("driver holds %d instances, want 3", h2.drv.Count())
	}
}

// startsOf counts how often the fake started an instance, to prove recovery left it alone.
func startsOf(t *testing.T, h *harness, name string) int {
	rec, err := h.st.GetInstance(name)
	if err != nil {
		t.Fatal(err)
	}
	return h.drv.Starts(rec.Handle)
}

// reasonFake is the fake driver with a reason for every pause, as QEMU has for an I/O error.
type reasonFake struct{ *fake.Driver }

func (reasonFake) StatusReason(context.Context, *driver.Handle) (string, error) {
	return "paused by QEMU on a disk I/O error", nil
}

// A pause the driver can explain shows its reason as the instance's status error; a running
// instance shows none.
func TestPausedStatusCarriesDriverReason(t *testing.T) {
	h := newHarnessWith(t, t.TempDir(), 0, func(d *fake.Driver) driver.Driver { return reasonFake{d} })
	ctx := context.Background()
	h.launch("v1")
	if inst, _ := h.m.Get(ctx, "v1"); inst.StatusError != "" {
		t.Fatalf("running: status error %q", inst.StatusError)
	}
	rec, _ := h.st.GetInstance("v1")
	h.drv.Pause(ctx, rec.Handle) // the hypervisor pauses it
	inst, _ := h.m.Get(ctx, "v1")
	if inst.Status != api.StatusPaused || inst.StatusError != "paused by QEMU on a disk I/O error" {
		t.Fatalf("paused: %s %q", inst.Status, inst.StatusError)
	}
}

// A stateful stop the driver cannot do is refused up front (it used to be a silent plain stop,
// losing the state the caller asked to keep); the instance keeps running.
func TestStatefulStopRefusedWithoutCheckpoint(t *testing.T) {
	h := newHarness(t, t.TempDir(), 0)
	ctx := context.Background()
	for _, tc := range []struct{ kind, want string }{
		{api.TypeVM, "stateful stop of vm instances is not supported by the fake driver"},
		{api.TypeContainer, "stateful stop of container instances is not supported by the fake driver"},
	} {
		name := "i-" + tc.kind
		op := h.wait(h.m.Create(ctx, api.InstancesPost{Name: name, Image: "busybox", Type: tc.kind, Start: true}))
		if op.Status != api.OpSuccess {
			t.Fatalf("launch %s: %+v", name, op)
		}
		for _, action := range []string{api.ActionStop, api.ActionRestart} {
			_, err := h.m.ChangeState(ctx, name, api.InstanceStatePut{Action: action, Stateful: true})
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%s --stateful of a %s: %v, want an invalid-argument error saying %q", action, tc.kind, err, tc.want)
			}
		}
		if got, err := h.m.Get(ctx, name); err != nil || got.Status != api.StatusRunning {
			t.Fatalf("%s after the refused stateful stop: %+v %v", name, got, err)
		}
	}
}

// probingDriver is a driver whose checkpoint is missing on this host for now (a probe running or
// failed): it answers a stateful stop itself, with its reason, so the control plane lets it through.
type probingDriver struct{ *fake.Driver }

func (d probingDriver) Info(ctx context.Context) driver.Info {
	info := d.Driver.Info(ctx)
	info.Missing = map[string]string{driver.CapCheckpoint: "being probed"}
	return info
}

func TestStatefulStopLeftToDriverWithMissingCheckpoint(t *testing.T) {
	h := newHarness(t, t.TempDir(), 0)
	ctx := context.Background()
	h.launch("c1")
	rec, _, err := h.m.recordAndDriver("c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := canStopStateful(ctx, rec.Type, probingDriver{h.drv}); err != nil {
		t.Fatalf("a driver that has checkpoint elsewhere was refused up front: %v", err)
	}
}
