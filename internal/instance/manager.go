// Package instance is the control plane: it validates requests, holds one lock per instance so two
// operations never interleave, records desired state before acting, drives the driver, and records
// what the driver then reports.
package instance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/events"
	"tandem/internal/logctx"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// DefaultStopTimeout is the graceful stop budget when the user gives none.
const DefaultStopTimeout = 30 * time.Second

// stateQueryTimeout bounds a driver State call made to answer a GET.
const stateQueryTimeout = 5 * time.Second

// Manager is the instance control plane of one host.
type Manager struct {
	store   *store.Store
	drivers *driver.Registry
	ops     *operations.Manager
	hub     *events.Hub
	// hostMemory returns the host's RAM in bytes, to refuse limits no host could meet.
	hostMemory func() uint64
	// networks is nil when networking is off; defaultNetwork is given to instances with no NIC.
	networks       Networks
	defaultNetwork string
	images         Images
	volumes        Volumes

	mu   sync.Mutex
	busy map[string]string // instance name -> id of the operation holding it
	// diskCleanups gives back the volumes plugged into running instances ("instance/disk").
	diskCleanups map[string]diskCleanup
	migRecovery  MigrationRecovery
	// rootLeases gives back the leases on the root disks of running instances.
	rootLeases map[string]func() error
}

// NewManager wires a control plane.
func NewManager(st *store.Store, drivers *driver.Registry, ops *operations.Manager, hub *events.Hub, hostMemory func() uint64) *Manager {
	return &Manager{store: st, drivers: drivers, ops: ops, hub: hub, hostMemory: hostMemory, busy: map[string]string{},
		diskCleanups: map[string]diskCleanup{}, rootLeases: map[string]func() error{}}
}

// SetNetworks turns on NIC address management; instances with no NIC get one on defaultNetwork
// (none if it is empty).
func (m *Manager) SetNetworks(n Networks, defaultNetwork string) {
	m.networks, m.defaultNetwork = n, defaultNetwork
}

// lock takes the instance for an operation, or says which operation has it.
func (m *Manager) lock(name, opID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if holder, ok := m.busy[name]; ok {
		return errdefs.Conflict("instance %q is busy with operation %s", name, holder)
	}
	m.busy[name] = opID
	return nil
}

func (m *Manager) unlock(name string) {
	m.mu.Lock()
	delete(m.busy, name)
	m.mu.Unlock()
}

func (m *Manager) holder(name string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.busy[name]
}

// runLocked takes the instance lock under a new operation and runs fn in it; the lock is released when
// fn returns. check runs under the lock before the operation starts, so its error reaches the caller
// synchronously (404, 409) and nothing is started.
func (m *Manager) runLocked(name, description string, check func() error, fn func(ctx context.Context, op *operations.Op) error) (*api.Operation, error) {
	op := m.ops.New(description, "/1.0/instances/"+name)
	if err := m.lock(name, op.ID()); err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(); err != nil {
			m.unlock(name)
			return nil, err
		}
	}
	return m.ops.Run(op, func(ctx context.Context, op *operations.Op) error {
		defer m.unlock(name)
		return fn(logctx.With(ctx, "instance", name), op)
	}), nil
}

// Create validates a new instance and creates it (and starts it, for a launch) in an operation.
func (m *Manager) Create(ctx context.Context, req api.InstancesPost) (*api.Operation, error) {
	if err := ValidateName(req.Name); err != nil {
		return nil, err
	}
	if req.Type == "" {
		req.Type = api.TypeContainer
	}
	if req.Type != api.TypeContainer && req.Type != api.TypeVM {
		return nil, errdefs.Invalid("instance type %q: want container or vm", req.Type)
	}
	if req.Image == "" {
		return nil, errdefs.Invalid("an image is required")
	}
	req.Devices = m.withDefaultNIC(req.Devices)
	if err := m.validateSpec(req.Config, req.Devices); err != nil {
		return nil, err
	}
	drvName, drv, err := m.drivers.ForType(req.Type)
	if err != nil {
		return nil, errdefs.Unavailable("this host cannot run %s instances: %v", req.Type, err)
	}
	if info := drv.Info(ctx); !info.Available {
		return nil, errdefs.Unavailable("the %s driver is not available on this host: %s", drvName, info.Reason)
	}
	if req.Devices, err = m.withRoot(req.Devices, req.Type, drv, req.ExistingRoot); err != nil {
		return nil, err
	}

	fingerprint := req.Image
	if m.images != nil {
		if fingerprint, err = m.images.Resolve(req.Image, req.Type); err != nil {
			return nil, err
		}
	}
	spec := driver.Spec{ID: uuid.NewString(), Name: req.Name, Type: req.Type, Image: fingerprint,
		Config: nonNil(req.Config), Devices: nonNilDevices(req.Devices)}
	rec := &store.InstanceRecord{
		Name: req.Name, Type: req.Type, Image: req.Image, CreatedAt: time.Now().UTC(),
		Desired:  store.DesiredState{Power: api.PowerStopped, Config: spec.Config, Devices: spec.Devices},
		Observed: store.ObservedState{Status: api.StatusUnknown},
		// The handle exists before the driver is called, so an interrupted create can be undone.
		Handle:  &driver.Handle{ID: spec.ID, Driver: drvName, Spec: spec},
		Pending: store.PendingCreate,
	}
	desc := "Creating instance " + req.Name
	if req.Start {
		desc = "Launching instance " + req.Name
	}
	check := func() error {
		if err := m.checkNewRoot(ctx, req.Name, req.Type, req.Devices, req.ExistingRoot); err != nil {
			return err
		}
		if err := m.store.CreateInstance(rec); err != nil {
			return err
		}
		if m.images != nil {
			if err := m.images.Ref(fingerprint, imageUser(req.Name)); err != nil {
				m.store.DeleteInstance(req.Name)
				return err
			}
		}
		return nil
	}
	return m.runLocked(req.Name, desc, check, func(ctx context.Context, op *operations.Op) error {
		if err := m.createInDriver(ctx, rec, drv, req.ExistingRoot); err != nil {
			return err
		}
		m.hub.Lifecycle("instance-created", req.Name)
		if !req.Start {
			return nil
		}
		return m.start(ctx, req.Name)
	})
}

// createInDriver makes the root disk and runs the driver's create; on failure it undoes what was
// made and forgets the record.
func (m *Manager) createInDriver(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver, existing bool) error {
	if err := m.attachNICs(ctx, rec.Name, nil, rec.Handle.Spec.Devices); err != nil {
		m.rollbackCreate(rec, drv)
		return err
	}
	if err := m.attachVolumes(ctx, rec.Name, rec.Type, nil, rec.Handle.Spec.Devices); err != nil {
		m.rollbackCreate(rec, drv)
		return err
	}
	way := newRoot
	if existing {
		way = existingRoot
	}
	if err := m.makeRoot(ctx, rec, drv, way); err != nil {
		m.rollbackCreate(rec, drv)
		return fmt.Errorf("create %s: %w", rec.Name, err)
	}
	// The driver prepares the root (owners, hostname): no other host may start from it meanwhile.
	if err := m.holdRoot(ctx, rec); err != nil {
		m.rollbackCreate(rec, drv)
		return fmt.Errorf("create %s: %w", rec.Name, err)
	}
	spec := rec.Handle.Spec
	h, err := drv.Create(ctx, &spec)
	m.letRootGo(rec.Name)
	if err != nil {
		m.rollbackCreate(rec, drv)
		return fmt.Errorf("create %s: %w", rec.Name, err)
	}
	h.Driver = rec.Handle.Driver
	_, err = m.store.UpdateInstance(rec.Name, func(r *store.InstanceRecord) error {
		r.Handle = h
		r.Pending = ""
		r.Observed = store.ObservedState{Status: api.StatusStopped, At: time.Now().UTC()}
		return nil
	})
	if err != nil {
		m.rollbackCreate(rec, drv)
		return err
	}
	return nil
}

// rollbackCreate removes what a failed create left. It runs on a fresh context: the operation's may be
// the reason for the failure (cancel), and the cleanup must still happen.
func (m *Manager) rollbackCreate(rec *store.InstanceRecord, drv driver.Driver) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A launch may have got as far as starting it.
	if st, err := drv.State(ctx, rec.Handle); err == nil && st != driver.StatusStopped && st != driver.StatusGone {
		drv.Stop(ctx, rec.Handle, driver.StopOpts{Force: true})
	}
	if err := drv.Delete(ctx, rec.Handle); err != nil {
		logctx.From(ctx).Error("rollback of failed create left driver state", "instance", rec.Name, "err", err)
		return // keep the record so a later delete can retry
	}
	m.detachNICs(rec.Name, rec.Desired.Devices, allNICs(rec.Desired.Devices))
	m.detachVolumes(rec.Name, rec.Desired.Devices, allDisks(rec.Desired.Devices))
	if err := m.deleteRoot(ctx, rec); err != nil {
		logctx.From(ctx).Error("rollback of failed create left the root disk", "instance", rec.Name, "err", err)
		return // keep the record so a later delete can retry
	}
	m.unrefImage(rec.Handle.Spec.Image, rec.Name)
	if err := m.store.DeleteInstance(rec.Name); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		logctx.From(ctx).Error("rollback of failed create", "instance", rec.Name, "err", err)
	}
}

func (m *Manager) validateSpec(config map[string]string, devices api.Devices) error {
	if err := ValidateConfig(config); err != nil {
		return err
	}
	if err := ValidateDevices(devices); err != nil {
		return err
	}
	if _, err := rootSize(config, devices); err != nil {
		return err
	}
	if l := ParseLimits(config); m.hostMemory != nil && l.Memory > 0 {
		if total := m.hostMemory(); total > 0 && l.Memory > total {
			return errdefs.Invalid("limits.memory %s is more than this host has (%d bytes)", config["limits.memory"], total)
		}
	}
	return nil
}

// diskView is what the disk code needs of a record.
func diskView(rec *store.InstanceRecord, devices map[string]map[string]string) *storeRecordView {
	return &storeRecordView{Name: rec.Name, Type: rec.Type, Handle: rec.Handle, Devices: devices}
}

// recordAndDriver loads an instance and its driver.
func (m *Manager) recordAndDriver(name string) (*store.InstanceRecord, driver.Driver, error) {
	rec, err := m.store.GetInstance(name)
	if err != nil {
		return nil, nil, err
	}
	if rec.Handle == nil {
		return nil, nil, errdefs.Conflict("instance %q is still being created", name)
	}
	drv, err := m.drivers.ByName(rec.Handle.Driver)
	if err != nil {
		return nil, nil, errdefs.Unavailable("instance %q: %v", name, err)
	}
	return rec, drv, nil
}

// saveHandle persists what the driver may have changed in the handle, with the observed status.
func (m *Manager) saveHandle(ctx context.Context, name string, drv driver.Driver, h *driver.Handle) {
	status, err := drv.State(ctx, h)
	obs := store.ObservedState{Status: apiStatus(status), At: time.Now().UTC()}
	if err != nil {
		obs = store.ObservedState{Status: api.StatusError, Error: err.Error(), At: obs.At}
	}
	if _, err := m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		r.Handle = h
		r.Observed = obs
		return nil
	}); err != nil {
		logctx.From(ctx).Error("persist instance handle", "instance", name, "err", err)
	}
}

// setDesired records what the user asked for before the driver acts, so that a daemon that dies
// mid-way finishes the job at recovery. It returns the previous value for rollback.
func (m *Manager) setDesired(name, power string) (string, error) {
	var prev string
	_, err := m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		prev = r.Desired.Power
		r.Desired.Power = power
		return nil
	})
	return prev, err
}

func apiStatus(s driver.Status) string {
	switch s {
	case driver.StatusRunning:
		return api.StatusRunning
	case driver.StatusStopped:
		return api.StatusStopped
	case driver.StatusPaused:
		return api.StatusPaused
	case driver.StatusGone:
		return api.StatusError
	}
	return api.StatusUnknown
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNilDevices(d api.Devices) map[string]map[string]string {
	if d == nil {
		return map[string]map[string]string{}
	}
	return d
}
