package qmp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"tandem/internal/qmp"
	"tandem/internal/qmp/qmptest"
)

func deleted(id string) map[string]any {
	return map[string]any{"device": id, "path": "/machine/peripheral/" + id}
}

func TestDeviceDelWaitsForItsDeviceDeleted(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("device_del").Args(map[string]any{"id": "disk1"}).
			Event(qmp.EventDeviceDeleted, deleted("disk0")). // someone else's
			Event(qmp.EventDeviceDeleted, map[string]any{"path": "/machine/peripheral/disk1/virtio-backend"}).
			Event(qmp.EventDeviceDeleted, deleted("disk1")),
		// The event may even beat the reply: it must not be missed.
		qmptest.Expect("device_del").Args(map[string]any{"id": "disk2"}).
			EventBefore(qmp.EventDeviceDeleted, map[string]any{"path": "/machine/peripheral/disk2"}),
	)
	c := srv.Dial(t)
	ctx := testCtx(t)
	if err := c.DeviceDel(ctx, "disk1"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeviceDel(ctx, "disk2"); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceDelBlocksUntilGuestReleases(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.Expect("device_del"), qmptest.Expect("device_del"))
	c := srv.Dial(t)
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() { done <- c.DeviceDel(ctx, "net0") }()
	if _, ok := srv.WaitFor("device_del", 5*time.Second); !ok {
		t.Fatal("device_del never sent")
	}
	select {
	case err := <-done:
		t.Fatalf("DeviceDel returned %v before DEVICE_DELETED", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := srv.Emit(qmp.EventDeviceDeleted, deleted("net0")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("DeviceDel still waiting after DEVICE_DELETED")
	}

	// A guest that never acts: ctx bounds the wait.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.DeviceDel(short, "net1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("unanswered DeviceDel error = %v", err)
	}
}

func TestDeviceDelGuestError(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.Expect("device_del").
		Event("DEVICE_UNPLUG_GUEST_ERROR", map[string]any{"device": "d1", "path": "/machine/peripheral/d1"}))
	c := srv.Dial(t)
	err := c.DeviceDel(testCtx(t), "d1")
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("error = %v, want a refused unplug", err)
	}
}

func TestExecuteAndWaitEvent(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("stop").EventBefore(qmp.EventStop, nil),
		qmptest.Expect("cont").Event(qmp.EventResume, nil),
		qmptest.Expect("migrate").Args(map[string]any{"uri": "unix:/m.sock"}).
			Event(qmp.EventMigration, map[string]any{"status": "setup"}).
			Event(qmp.EventMigration, map[string]any{"status": "active"}).
			Event(qmp.EventMigration, map[string]any{"status": "completed"}),
	)
	c := srv.Dial(t)
	ctx := testCtx(t)
	ev, err := c.ExecuteAndWait(ctx, "stop", nil, nil, qmp.EventStop, nil)
	if err != nil || ev.Name != qmp.EventStop || ev.Timestamp.IsZero() {
		t.Fatalf("stop: %+v, %v", ev, err)
	}
	w := c.ExpectEvent(qmp.EventResume, nil)
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err = c.ExecuteAndWait(ctx, "migrate", map[string]any{"uri": "unix:/m.sock"}, nil, qmp.EventMigration,
		func(ev qmp.Event) bool {
			var d struct{ Status string }
			return ev.Decode(&d) == nil && d.Status == qmp.MigrationCompleted
		})
	if err != nil {
		t.Fatal(err)
	}
	var d struct{ Status string }
	if err := ev.Decode(&d); err != nil || d.Status != "completed" {
		t.Errorf("event %s data %s", ev.Name, ev.Data)
	}
}

func TestWaitEventTimesOut(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := srv.Dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.WaitEvent(ctx, qmp.EventShutdown, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v", err)
	}
}

func TestSubscribeFilterAndCancel(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := srv.Dial(t)
	ctx := testCtx(t)
	stops, cancel := c.Subscribe(qmp.EventStop)
	all, cancelAll := c.Subscribe()
	defer cancelAll()
	srv.Emit(qmp.EventResume, nil)
	srv.Emit(qmp.EventStop, map[string]any{})
	if ev := recv(t, ctx, stops); ev.Name != qmp.EventStop {
		t.Errorf("filtered subscription got %s", ev.Name)
	}
	if a, b := recv(t, ctx, all), recv(t, ctx, all); a.Name != qmp.EventResume || b.Name != qmp.EventStop {
		t.Errorf("unfiltered subscription got %s, %s", a.Name, b.Name)
	}
	cancel()
	cancel() // idempotent
	if _, ok := <-stops; ok {
		t.Error("channel open after cancel")
	}
}

func recv(t *testing.T, ctx context.Context, ch <-chan qmp.Event) qmp.Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-ctx.Done():
		t.Fatal("no event")
		return qmp.Event{}
	}
}

// A subscriber that never reads must cost events, not replies.
func TestSlowSubscriberDoesNotBlockReplies(t *testing.T) {
	const n = qmp.EventBuffer + 100
	step := qmptest.Expect("query-status").Return(map[string]any{"status": "running", "running": true})
	for i := range n {
		step.EventBefore("TICK", map[string]any{"i": i})
	}
	srv := qmptest.NewServer(t, step)
	c := srv.Dial(t)
	ctx := testCtx(t)
	stuck, cancel := c.Subscribe("TICK")
	defer cancel()
	if _, err := c.QueryStatus(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.DroppedEvents(); got != n-qmp.EventBuffer {
		t.Errorf("dropped %d events, want %d", got, n-qmp.EventBuffer)
	}
	// What was kept is the oldest events, in order.
	for i := range qmp.EventBuffer {
		var d struct{ I int }
		if ev := recv(t, ctx, stuck); ev.Decode(&d) != nil || d.I != i {
			t.Fatalf("event %d is %s", i, ev.Data)
		}
	}
	// A waiter keeps what it watches for even while others overflow.
	w := c.ExpectEvent("TOCK", nil)
	for i := range 2 * qmp.EventBuffer {
		srv.Emit("TICK", map[string]any{"i": i})
	}
	srv.Emit("TOCK", nil)
	if _, err := w.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestEventOrderPerSubscriber(t *testing.T) {
	srv := qmptest.NewServer(t)
	c := srv.Dial(t)
	ctx := testCtx(t)
	ch, cancel := c.Subscribe("N")
	defer cancel()
	for i := range 10 {
		srv.Emit("N", map[string]any{"i": i})
	}
	for i := range 10 {
		var d struct{ I int }
		ev := recv(t, ctx, ch)
		if err := ev.Decode(&d); err != nil || d.I != i {
			t.Fatalf("event %d: %s", i, ev.Data)
		}
	}
}
