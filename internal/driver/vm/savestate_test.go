package vm

import (
	"strings"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/qmp/qmptest"
	"tandem/internal/testenv"
)

func guestStatus(on bool) map[string]any {
	if on {
		return map[string]any{"status": "running", "running": true}
	}
	return map[string]any{"status": "paused", "running": false}
}

// A save pauses the guest before the stream starts (so the state is one instant) and waits for
// QEMU to complete it.
func TestSaveStatePausesAndWaits(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("query-status").Return(guestStatus(true)),
		qmptest.Expect("stop"),
		qmptest.Expect("migrate").Args(map[string]any{"uri": "unix:/run/x/save.sock"}),
		qmptest.Expect("query-migrate").Return(map[string]any{"status": "active"}),
		qmptest.Expect("query-migrate").Return(map[string]any{"status": "completed"}),
	)
	ctx := testenv.Context(t, 10*time.Second)
	if ran, err := migrateOut(ctx, srv.Dial(t), "unix:/run/x/save.sock"); err != nil || !ran {
		t.Fatalf("save: ran before %v, %v", ran, err)
	}
}

// A save that fails leaves the guest running as it was: the migration is cancelled and the
// vCPUs resumed.
func TestSaveStateFailureResumes(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("query-status").Return(guestStatus(true)),
		qmptest.Expect("stop"),
		qmptest.Expect("migrate"),
		qmptest.Expect("query-migrate").Return(map[string]any{"status": "failed", "error-desc": "disk full"}),
		qmptest.Expect("migrate_cancel"),
		qmptest.Expect("cont"),
	)
	ctx := testenv.Context(t, 10*time.Second)
	_, err := migrateOut(ctx, srv.Dial(t), "unix:/s")
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v, want QEMU's reason", err)
	}
}

// A paused guest stays paused after a failed save.
func TestSaveStateFailureKeepsPaused(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("query-status").Return(guestStatus(false)),
		qmptest.Expect("stop"),
		qmptest.Expect("migrate").Fail("GenericError", "no socket"),
		qmptest.Expect("migrate_cancel"),
	)
	ctx := testenv.Context(t, 10*time.Second)
	if _, err := migrateOut(ctx, srv.Dial(t), "unix:/s"); err == nil {
		t.Fatal("a failed migrate was taken for a save")
	}
	for _, c := range srv.Commands() {
		if c.Name == "cont" {
			t.Fatal("a guest that was paused was resumed")
		}
	}
}

func TestCanSaveStateRefusesVolumes(t *testing.T) {
	h := &driver.Handle{Spec: driver.Spec{Devices: map[string]map[string]string{
		"eth0": {"type": "nic"}, "data": {"type": "disk", "path": "/mnt/data", "source": "vol1"}}}}
	if err := canSaveState(h, instanceConfig{}); err == nil || !strings.Contains(err.Error(), "detach data") {
		t.Fatalf("a VM with a volume: %v", err)
	}
	delete(h.Spec.Devices, "data")
	if err := canSaveState(h, instanceConfig{}); err != nil {
		t.Fatalf("a VM with a NIC only: %v", err)
	}
}
