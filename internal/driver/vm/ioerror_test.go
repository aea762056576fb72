package vm

import (
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/qmp/qmptest"
	"tandem/internal/testenv"
)

func ioErrorStatus() any { return map[string]any{"running": false, "status": "io-error"} }

func fullDisk() any {
	return []map[string]any{
		{"device": "", "qdev": "/machine/peripheral/root/virtio-backend", "io-status": "nospace"},
		{"device": "", "qdev": "/machine/peripheral/data1/virtio-backend", "io-status": "ok"},
	}
}

// A VM QEMU paused on a full pool says so, naming the disk, instead of a bare Paused.
func TestStatusReasonNamesFullDisk(t *testing.T) {
	f := newFakeVM(t)
	f.srv.Handle("query-status", qmptest.Expect("query-status").Return(ioErrorStatus()))
	f.srv.Handle("query-block", qmptest.Expect("query-block").Return(fullDisk()))
	reason, err := f.d.StatusReason(testenv.Context(t, time.Minute), f.h)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"disk I/O error", "disk root: no space left on its storage pool"} {
		if !strings.Contains(reason, w) {
			t.Fatalf("reason %q does not say %q", reason, w)
		}
	}
	if strings.Contains(reason, "data1") {
		t.Fatalf("reason names a healthy disk: %q", reason)
	}

	f2 := newFakeVM(t)
	f2.srv.Handle("query-status", qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "paused"}))
	if reason, err := f2.d.StatusReason(testenv.Context(t, time.Minute), f2.h); err != nil || reason != "" {
		t.Fatalf("a user's pause: reason %q, %v", reason, err)
	}
}

// A resume that cannot hold (the retried write fails again at once) fails with the reason, so the
// CLI does not exit 0 while the VM stays paused.
func TestResumeAfterIOErrorThatRepeatsFails(t *testing.T) {
	f := newFakeVM(t)
	f.srv.Handle("query-status", qmptest.Expect("query-status").Return(ioErrorStatus()))
	f.srv.Handle("query-block", qmptest.Expect("query-block").Return(fullDisk()))
	f.srv.Handle("cont", qmptest.Expect("cont"))
	err := f.d.Resume(testenv.Context(t, time.Minute), f.h)
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "no space left") || !strings.Contains(err.Error(), "stays paused") {
		t.Fatalf("resume into a full pool: %v", err)
	}
}

// Once space is freed, the resume holds and succeeds.
func TestResumeAfterIOErrorThatHolds(t *testing.T) {
	f := newFakeVM(t)
	var resumed atomic.Bool
	f.srv.Handle("query-status", qmptest.Expect("query-status").ReplyFunc(func(json.RawMessage) (any, error) {
		if resumed.Load() {
			return running(), nil
		}
		return ioErrorStatus(), nil
	}))
	f.srv.Handle("query-block", qmptest.Expect("query-block").Return(fullDisk()))
	f.srv.Handle("cont", qmptest.Expect("cont").ReplyFunc(func(json.RawMessage) (any, error) {
		resumed.Store(true)
		return map[string]any{}, nil
	}))
	start := time.Now()
	if err := f.d.Resume(testenv.Context(t, time.Minute), f.h); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < resumeHoldsFor {
		t.Fatalf("resume returned after %s, before it could know the guest kept running", took)
	}
}
