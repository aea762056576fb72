// Package fake is an in-memory driver (optionally persisted to a directory, so its "instances" outlive a
// daemon restart the way real processes do). It runs nothing; it exists to test the control plane and
// to be the reference the conformance suite is checked against.
package fake

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"tandem/internal/driver"
	"tandem/internal/fsutil"
	"tandem/internal/progress"
)

// Options tune the fake.
type Options struct {
	// Dir, if set, persists instance states there as JSON files.
	Dir string
	// Delay is how long Create, Start and Stop take, reported as progress in steps.
	Delay time.Duration
}

// Driver is the fake driver.
type Driver struct {
	opts Options
	mu   sync.Mutex
	mem  map[string]*state // used when Dir is empty
}

type state struct {
	Status  driver.Status `json:"status"`
	Name    string        `json:"name"`
	Starts  int           `json:"starts"`
	Updated int           `json:"updated"`
}

var (
	_ driver.Driver    = (*Driver)(nil)
	_ driver.Pauser    = (*Driver)(nil)
	_ driver.Updater   = (*Driver)(nil)
	_ driver.Statter   = (*Driver)(nil)
	_ driver.Inventory = (*Driver)(nil)
)

func New(opts Options) (*Driver, error) {
	if opts.Dir != "" {
		if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
			return nil, err
		}
	}
	return &Driver{opts: opts, mem: map[string]*state{}}, nil
}

func (d *Driver) Info(ctx context.Context) driver.Info {
	return driver.Info{Name: "fake", Version: "1", Available: true,
		Capabilities: []string{driver.CapPause, driver.CapStats, driver.CapExec, driver.CapConsole}}
}

func (d *Driver) Create(ctx context.Context, spec *driver.Spec) (*driver.Handle, error) {
	if spec.ID == "" {
		return nil, fmt.Errorf("fake: spec has no id")
	}
	if err := d.wait(ctx, "creating"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, _ := d.load(spec.ID); s != nil {
		return nil, fmt.Errorf("fake: instance %s exists", spec.ID)
	}
	if err := d.save(spec.ID, &state{Status: driver.StatusStopped, Name: spec.Name}); err != nil {
		return nil, err
	}
	return &driver.Handle{ID: spec.ID, Driver: "fake", Version: 1, Spec: *spec}, nil
}

func (d *Driver) Start(ctx context.Context, h *driver.Handle) error {
	if err := d.wait(ctx, "starting"); err != nil {
		return err
	}
	return d.transition(h, func(s *state) error {
		if s.Status != driver.StatusStopped {
			return fmt.Errorf("fake: cannot start from %s", s.Status)
		}
		s.Status = driver.StatusRunning
		s.Starts++
		return nil
	})
}

func (d *Driver) Stop(ctx context.Context, h *driver.Handle, opts driver.StopOpts) error {
	if !opts.Force {
		if err := d.wait(ctx, "stopping"); err != nil {
			return err
		}
	}
	return d.transition(h, func(s *state) error {
		if s.Status == driver.StatusStopped {
			return driver.ErrNotRunning
		}
		s.Status = driver.StatusStopped
		return nil
	})
}

func (d *Driver) Delete(ctx context.Context, h *driver.Handle) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.load(h.ID)
	if err != nil {
		return err
	}
	if s != nil && s.Status != driver.StatusStopped {
		return fmt.Errorf("fake: cannot delete a %s instance", s.Status)
	}
	delete(d.mem, h.ID)
	if d.opts.Dir != "" {
		if err := os.Remove(d.path(h.ID)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

func (d *Driver) State(ctx context.Context, h *driver.Handle) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.load(h.ID)
	if err != nil {
		return "", err
	}
	if s == nil {
		return driver.StatusGone, nil
	}
	return s.Status, nil
}

// Recover has nothing to re-attach to; it checks the instance is known.
func (d *Driver) Recover(ctx context.Context, h *driver.Handle) error {
	_, err := d.State(ctx, h)
	return err
}

func (d *Driver) Pause(ctx context.Context, h *driver.Handle) error {
	return d.transition(h, func(s *state) error {
		if s.Status != driver.StatusRunning {
			return driver.ErrNotRunning
		}
		s.Status = driver.StatusPaused
		return nil
	})
}

func (d *Driver) Resume(ctx context.Context, h *driver.Handle) error {
	return d.transition(h, func(s *state) error {
		if s.Status != driver.StatusPaused {
			return fmt.Errorf("fake: cannot resume from %s", s.Status)
		}
		s.Status = driver.StatusRunning
		return nil
	})
}

func (d *Driver) Update(ctx context.Context, h *driver.Handle, spec *driver.Spec) error {
	err := d.transition(h, func(s *state) error { s.Updated++; return nil })
	if err == nil {
		h.Spec = *spec
	}
	return err
}

func (d *Driver) Stats(ctx context.Context, h *driver.Handle) (driver.Stats, error) {
	st, err := d.State(ctx, h)
	if err != nil {
		return driver.Stats{}, err
	}
	if st != driver.StatusRunning && st != driver.StatusPaused {
		return driver.Stats{}, driver.ErrNotRunning
	}
	return driver.Stats{Processes: 1}, nil
}

// InstanceIDs lists the instances the fake holds.
func (d *Driver) InstanceIDs(context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	if d.opts.Dir == "" {
		for id := range d.mem {
			ids = append(ids, id)
		}
		return ids, nil
	}
	entries, err := os.ReadDir(d.opts.Dir)
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			ids = append(ids, id)
		}
	}
	return ids, err
}

// Count returns how many instances the fake holds (for leak checks in tests).
func (d *Driver) Count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.opts.Dir == "" {
		return len(d.mem)
	}
	entries, _ := os.ReadDir(d.opts.Dir)
	return len(entries)
}

func (d *Driver) transition(h *driver.Handle, fn func(*state) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.load(h.ID)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("fake: instance %s does not exist", h.ID)
	}
	if err := fn(s); err != nil {
		return err
	}
	return d.save(h.ID, s)
}

// wait spends the configured delay in ten steps, reporting progress and honouring cancellation.
func (d *Driver) wait(ctx context.Context, what string) error {
	if d.opts.Delay <= 0 {
		return ctx.Err()
	}
	step := d.opts.Delay / 10
	for i := 0; i < 10; i++ {
		progress.Report(ctx, i*10, what)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(step):
		}
	}
	return nil
}

func (d *Driver) path(id string) string { return filepath.Join(d.opts.Dir, id+".json") }

func (d *Driver) load(id string) (*state, error) {
	if d.opts.Dir == "" {
		s := d.mem[id]
		if s == nil {
			return nil, nil
		}
		c := *s
		return &c, nil
	}
	data, err := os.ReadFile(d.path(id))
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s := &state{}
	return s, json.Unmarshal(data, s)
}

// save writes atomically (temp file, fsync, rename) so a killed daemon never leaves half a state.
func (d *Driver) save(id string, s *state) error {
	if d.opts.Dir == "" {
		c := *s
		d.mem[id] = &c
		return nil
	}
	data, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(d.path(id), data, 0o600)
}

// Starts returns how many times an instance was started (tests use it to see that nothing restarted it).
func (d *Driver) Starts(h *driver.Handle) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, _ := d.load(h.ID)
	if s == nil {
		return 0
	}
	return s.Starts
}
