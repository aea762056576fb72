package operations

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/events"
	"tandem/internal/logctx"
	"tandem/internal/progress"
	"tandem/internal/store"
)

func newManager(t *testing.T, path string) (*Manager, *store.Store) {
	t.Helper()
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return NewManager(st, events.NewHub()), st
}

func TestRunReportsProgressAndResult(t *testing.T) {
	m, st := newManager(t, filepath.Join(t.TempDir(), "s.db"))
	defer st.Close()
	step := make(chan struct{})
	op := m.New("test")
	m.Run(op, func(ctx context.Context, op *Op) error {
		progress.Report(ctx, 40, "half-way")
		op.SetMetadata("downtime_ms", 12)
		<-step
		return nil
	})
	time.Sleep(20 * time.Millisecond)
	live, _ := m.Get(op.ID())
	if live.Status != api.OpRunning || live.Progress.Percent != 40 || live.Progress.Message != "half-way" {
		t.Fatalf("live: %+v", live)
	}
	close(step)
	done, _ := m.Wait(context.Background(), op.ID(), 5*time.Second)
	if done.Status != api.OpSuccess || done.Progress.Percent != 100 || done.Metadata["downtime_ms"] == nil {
		t.Fatalf("done: %+v", done)
	}
	// Persisted.
	if stored, _ := st.GetOperation(op.ID()); stored.Status != api.OpSuccess {
		t.Fatalf("stored: %+v", stored)
	}
}

func TestFailureAndCancel(t *testing.T) {
	m, st := newManager(t, filepath.Join(t.TempDir(), "s.db"))
	defer st.Close()
	failing := m.New("fails")
	m.Run(failing, func(ctx context.Context, op *Op) error { return errors.New("disk on fire") })
	if op, _ := m.Wait(context.Background(), failing.ID(), 5*time.Second); op.Status != api.OpFailure || op.Err != "disk on fire" {
		t.Fatalf("failing: %+v", op)
	}
	slow := m.New("slow")
	m.Run(slow, func(ctx context.Context, op *Op) error { <-ctx.Done(); return ctx.Err() })
	if _, err := m.Cancel(slow.ID()); err != nil {
		t.Fatal(err)
	}
	if op, _ := m.Wait(context.Background(), slow.ID(), 5*time.Second); op.Status != api.OpCancelled {
		t.Fatalf("cancelled: %+v", op)
	}
	if _, err := m.Cancel(slow.ID()); err == nil {
		t.Fatal("cancel of a finished operation succeeded")
	}
}

// An operation that was running when the daemon died is reported failed on the next start.
func TestRecoverMarksInterruptedFailed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.db")
	m, st := newManager(t, path)
	op := m.New("interrupted")
	block := make(chan struct{})
	m.Run(op, func(ctx context.Context, op *Op) error { <-block; return nil })
	st.Close() // the "crash": the operation never finishes in this daemon
	close(block)

	m2, st2 := newManager(t, path)
	defer st2.Close()
	if err := m2.Recover(); err != nil {
		t.Fatal(err)
	}
	got, err := m2.Get(op.ID())
	if err != nil || got.Status != api.OpFailure || got.Err == "" {
		t.Fatalf("after recover: %+v %v", got, err)
	}
}

// What an operation logs through its context says which operation it was.
func TestOperationContextLogsItsID(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	m, _ := newManager(t, filepath.Join(t.TempDir(), "state.db"))
	op := m.New("logs")
	m.Run(op, func(ctx context.Context, op *Op) error {
		logctx.From(ctx).Info("working")
		return nil
	})
	<-op.done
	if want := "op=" + op.ID(); !strings.Contains(buf.String(), want) {
		t.Fatalf("log %q lacks %s", buf.String(), want)
	}
}
