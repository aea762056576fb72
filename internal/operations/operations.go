// Package operations runs slow API calls in the background and tracks them: status, progress, result,
// cancellation. Every state change is persisted, so a daemon restart can report an operation that it
// interrupted as failed instead of forgetting it.
package operations

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/events"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// Store is where operations are persisted.
type Store interface {
	PutOperation(op *api.Operation) error
	GetOperation(id string) (*api.Operation, error)
	ListOperations() ([]*api.Operation, error)
	DeleteOperation(id string) error
}

// keepFinished bounds how many finished operations are kept for `operation list`.
const keepFinished = 200

// Manager runs and tracks operations.
type Manager struct {
	store Store
	hub   *events.Hub

	mu      sync.Mutex
	running map[string]*Op
	wg      sync.WaitGroup
}

func NewManager(store Store, hub *events.Hub) *Manager {
	return &Manager{store: store, hub: hub, running: map[string]*Op{}}
}

// Op is an operation in flight.
type Op struct {
	m      *Manager
	mu     sync.Mutex
	state  api.Operation
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// ID returns the operation's id.
func (o *Op) ID() string { return o.state.ID }

// Progress records how far the operation got; it is cheap and may be called often.
func (o *Op) Progress(percent int, message string) {
	o.SetProgress(api.Progress{Percent: percent, Message: message})
}

// SetProgress records progress with its stage and byte counts, and publishes it when it changed.
func (o *Op) SetProgress(p api.Progress) {
	o.mu.Lock()
	changed := o.state.Progress != p
	o.state.Progress = p
	o.state.UpdatedAt = time.Now().UTC()
	snap := o.state
	o.mu.Unlock()
	if changed {
		o.m.hub.Publish(api.EventOperation, snap)
	}
}

// SetMetadata attaches a result figure to the operation (e.g. a migration's downtime).
func (o *Op) SetMetadata(key string, value any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.state.Metadata == nil {
		o.state.Metadata = map[string]any{}
	}
	o.state.Metadata[key] = value
}

func (o *Op) snapshot() *api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.state
	if s.Metadata != nil {
		md := make(map[string]any, len(s.Metadata))
		for k, v := range s.Metadata {
			md[k] = v
		}
		s.Metadata = md
	}
	return &s
}

// New prepares an operation without starting it, so the caller can take locks under its id first.
func (m *Manager) New(description string, resources ...string) *Op {
	now := time.Now().UTC()
	op := &Op{m: m, done: make(chan struct{}), state: api.Operation{
		ID: uuid.NewString(), Description: description, Status: api.OpPending,
		Resources: resources, MayCancel: true, CreatedAt: now, UpdatedAt: now,
	}}
	// Whatever the operation logs says which operation it was (logctx.From(ctx)).
	op.ctx, op.cancel = context.WithCancel(logctx.With(context.Background(), "op", op.state.ID))
	return op
}

// Run starts fn in the background and returns the operation as it is at start.
func (m *Manager) Run(op *Op, fn func(ctx context.Context, op *Op) error) *api.Operation {
	op.mu.Lock()
	op.state.Status = api.OpRunning
	op.mu.Unlock()
	m.mu.Lock()
	m.running[op.ID()] = op
	m.mu.Unlock()
	m.persist(op.snapshot())
	m.wg.Add(1)
	go m.execute(op, fn)
	return op.snapshot()
}

func (m *Manager) execute(op *Op, fn func(ctx context.Context, op *Op) error) {
	defer m.wg.Done()
	ctx := progress.With(op.ctx, op.Progress)
	err := fn(ctx, op)
	op.mu.Lock()
	switch {
	case err == nil:
		op.state.Status = api.OpSuccess
		op.state.Progress.Percent = 100
	case op.ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, errdefs.ErrCancelled)):
		op.state.Status = api.OpCancelled
		op.state.Err = err.Error()
	default:
		op.state.Status = api.OpFailure
		op.state.Err = err.Error()
	}
	op.state.UpdatedAt = time.Now().UTC()
	op.mu.Unlock()
	final := op.snapshot()
	m.persist(final)
	m.mu.Lock()
	delete(m.running, op.ID())
	m.mu.Unlock()
	op.cancel()
	close(op.done)
	if err != nil {
		logctx.From(ctx).Warn("operation failed", "description", final.Description, "status", final.Status, "err", err)
	}
}

func (m *Manager) persist(op *api.Operation) {
	if err := m.store.PutOperation(op); err != nil {
		slog.Error("persist operation", "op", op.ID, "err", err)
	}
	m.hub.Publish(api.EventOperation, op)
}

// Get returns an operation, live if it runs, else as last persisted.
func (m *Manager) Get(id string) (*api.Operation, error) {
	m.mu.Lock()
	op, ok := m.running[id]
	m.mu.Unlock()
	if ok {
		return op.snapshot(), nil
	}
	return m.store.GetOperation(id)
}

// List returns all known operations, oldest first, with live state for those running.
func (m *Manager) List() ([]*api.Operation, error) {
	ops, err := m.store.ListOperations()
	if err != nil {
		return nil, err
	}
	for i, op := range ops {
		if live, err := m.Get(op.ID); err == nil {
			ops[i] = live
		}
	}
	return ops, nil
}

// Wait blocks until the operation is done, timeout passes (negative: no timeout) or ctx ends, and
// returns its state then.
func (m *Manager) Wait(ctx context.Context, id string, timeout time.Duration) (*api.Operation, error) {
	m.mu.Lock()
	op, ok := m.running[id]
	m.mu.Unlock()
	if !ok {
		return m.store.GetOperation(id)
	}
	var timer <-chan time.Time
	if timeout >= 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-op.done:
	case <-timer:
	case <-ctx.Done():
	}
	return m.Get(id)
}

// Cancel asks a running operation to stop; the operation itself decides how to unwind.
func (m *Manager) Cancel(id string) (*api.Operation, error) {
	m.mu.Lock()
	op, ok := m.running[id]
	m.mu.Unlock()
	if !ok {
		if _, err := m.store.GetOperation(id); err != nil {
			return nil, err
		}
		return nil, errdefs.Conflict("operation %s has already finished", id)
	}
	if !op.snapshot().MayCancel {
		return nil, errdefs.Conflict("operation %s cannot be cancelled", id)
	}
	op.cancel()
	return op.snapshot(), nil
}

// Recover marks operations that were running when the daemon last stopped as failed, and prunes old ones.
func (m *Manager) Recover() error {
	ops, err := m.store.ListOperations()
	if err != nil {
		return err
	}
	finished := 0
	for i := len(ops) - 1; i >= 0; i-- {
		op := ops[i]
		if !op.Done() {
			op.Status = api.OpFailure
			op.Err = "tandemd stopped while the operation was running"
			op.UpdatedAt = time.Now().UTC()
			if err := m.store.PutOperation(op); err != nil {
				return err
			}
			slog.Warn("operation interrupted by a daemon stop", "op", op.ID, "description", op.Description)
		}
		finished++
		if finished > keepFinished {
			m.store.DeleteOperation(op.ID)
		}
	}
	return nil
}

// Shutdown cancels running operations and waits for them up to timeout.
func (m *Manager) Shutdown(timeout time.Duration) {
	m.mu.Lock()
	for _, op := range m.running {
		op.cancel()
	}
	m.mu.Unlock()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		slog.Warn("operations still running at shutdown; they will be reported failed on the next start")
	}
}
