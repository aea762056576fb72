package instance

import (
	"github.com/google/uuid"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// Migration bookkeeping. The migrate package moves the bytes and drives the drivers; this file
// keeps records, locks, NIC leases and image references straight on both hosts. A record that is
// mid-migration says so in Pending, so a daemon that dies in the middle settles it at recovery.

const (
	pendingOutgoing = "moving:"   // source: "moving:<migration id>:<remote>"
	pendingIncoming = "incoming:" // destination: "incoming:<migration id>"
)

// MigrationRecovery settles, at daemon start, the records a dead daemon left mid-migration.
type MigrationRecovery interface {
	RecoverOutgoing(ctx context.Context, rec *store.InstanceRecord, id, remote string)
	RecoverIncoming(ctx context.Context, rec *store.InstanceRecord, id string)
}

// SetMigrationRecovery wires the migration engine in; without it, such records are left alone.
func (m *Manager) SetMigrationRecovery(r MigrationRecovery) { m.migRecovery = r }

// recoverMigration hands a record left mid-migration to the engine; false if it is not one.
func (m *Manager) recoverMigration(ctx context.Context, rec *store.InstanceRecord) bool {
	id, remote, out := ParseOutgoing(rec.Pending)
	in := strings.HasPrefix(rec.Pending, pendingIncoming)
	if !out && !in {
		return false
	}
	if m.migRecovery == nil {
		slog.Error("instance was mid-migration and no migration engine is wired", "instance", rec.Name)
		return true
	}
	if out {
		m.migRecovery.RecoverOutgoing(ctx, rec, id, remote)
	} else {
		m.migRecovery.RecoverIncoming(ctx, rec, strings.TrimPrefix(rec.Pending, pendingIncoming))
	}
	return true
}

// ParseOutgoing splits a source record's Pending value.
func ParseOutgoing(pending string) (id, remote string, ok bool) {
	rest, ok := strings.CutPrefix(pending, pendingOutgoing)
	if !ok {
		return "", "", false
	}
	id, remote, ok = strings.Cut(rest, ":")
	return id, remote, ok
}

// IncomingID returns the migration a destination record is part of ("" if none).
func IncomingID(rec *store.InstanceRecord) string {
	id, _ := strings.CutPrefix(rec.Pending, pendingIncoming)
	if id == rec.Pending {
		return ""
	}
	return id
}

// RunMigration runs fn in an operation that holds the instance, after check passes (both see the
// record and its driver).
func (m *Manager) RunMigration(name, description string, check, fn func(ctx context.Context, op *operations.Op, rec *store.InstanceRecord, drv driver.Driver) error) (*api.Operation, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	var rec *store.InstanceRecord
	var drv driver.Driver
	pre := func() (err error) {
		if rec, drv, err = m.recordAndDriver(name); err != nil {
			return err
		}
		if rec.Pending != "" {
			return errdefs.Conflict("instance %q is %s", name, rec.Pending)
		}
		return check(context.Background(), nil, rec, drv)
	}
	return m.runLocked(name, description, pre, func(ctx context.Context, op *operations.Op) error {
		return fn(ctx, op, rec, drv)
	})
}

// Status asks the driver for an instance's status.
func (m *Manager) Status(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver) (string, error) {
	st, err := drv.State(ctx, rec.Handle)
	if err != nil {
		return "", err
	}
	return apiStatus(st), nil
}

// NICs reports an instance's NICs with their leased MACs and addresses.
func (m *Manager) NICs(ctx context.Context, rec *store.InstanceRecord) []api.NIC {
	return m.nicViews(ctx, rec.Name, rec.Desired.Devices)
}

// MarkOutgoing records that the instance is being moved (migration id, to remote), or clears it
// (id ""), durably: a daemon that dies mid-move asks the remote how it ended.
func (m *Manager) MarkOutgoing(name, id, remote string) error {
	_, err := m.store.UpdateInstance(name, func(r *store.InstanceRecord) error {
		r.Pending = ""
		if id != "" {
			r.Pending = pendingOutgoing + id + ":" + remote
		}
		return nil
	})
	return err
}

// SaveHandle persists a handle a migration step changed, with the observed status.
func (m *Manager) SaveHandle(ctx context.Context, name string, drv driver.Driver, h *driver.Handle) {
	m.saveHandle(ctx, name, drv, h)
}

// ForgetMoved drops an instance that now lives on another host: its NIC leases, its image
// reference and its record. The driver's part (Release) is the caller's, before this.
func (m *Manager) ForgetMoved(ctx context.Context, rec *store.InstanceRecord, remote string) error {
	m.unplugNICs(ctx, rec.Name, rec.Desired.Devices)
	m.detachNICs(rec.Name, rec.Desired.Devices, allNICs(rec.Desired.Devices))
	m.detachVolumes(rec.Name, rec.Desired.Devices, allDisks(rec.Desired.Devices))
	if err := m.deleteRoot(ctx, rec); err != nil {
		return err
	}
	m.unrefImage(rec.Handle.Spec.Image, rec.Name)
	if err := m.store.DeleteInstance(rec.Name); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	m.hub.Lifecycle("instance-moved", rec.Name)
	slog.Info("instance moved away", "instance", rec.Name, "to", remote)
	return nil
}

// Incoming is an instance a destination is receiving: its record exists (Pending "incoming:ID"),
// its name is held, its NICs are leased and its image referenced. End it with Finish or Drop.
type Incoming struct {
	Record *store.InstanceRecord
	Driver driver.Driver
	m      *Manager
	done   bool
}

// BeginIncoming checks that this host can take the instance post describes and reserves what it
// needs. A move keeps the NICs' MACs and addresses (the devices carry them); it fails if another
// instance here has them.
func (m *Manager) BeginIncoming(ctx context.Context, post api.MigrationPost) (*Incoming, error) {
	if err := ValidateName(post.Name); err != nil {
		return nil, err
	}
	if post.Type != api.TypeContainer && post.Type != api.TypeVM {
		return nil, errdefs.Invalid("instance type %q: want container or vm", post.Type)
	}
	if err := m.validateSpec(post.Config, post.Devices); err != nil {
		return nil, err
	}
	drvName, drv, err := m.drivers.ForType(post.Type)
	if err != nil {
		return nil, errdefs.Unavailable("this host cannot run %s instances: %v", post.Type, err)
	}
	if info := drv.Info(ctx); !info.Available {
		return nil, errdefs.Unavailable("the %s driver is not available on this host: %s", drvName, info.Reason)
	}
	var h driver.Handle
	if err := json.Unmarshal(post.Handle, &h); err != nil || h.ID == "" {
		return nil, errdefs.Invalid("migration %s: the handle is not valid (%v)", post.ID, err)
	}
	h.Driver = drvName
	h.Spec.Name, h.Spec.Type, h.Spec.Image = post.Name, post.Type, post.ImageFP
	h.Spec.Config, h.Spec.Devices = nonNil(post.Config), nonNilDevices(post.Devices)
	// A root on a shared pool is used in place (adopted below); any other root the source has is
	// on its own pools: here the driver keeps the copy it receives.
	h.Spec.Root = nil
	shared := post.Storage == api.StorageShared && rootDevice(h.Spec.Devices) != nil && m.volumes != nil
	_, canPool := drv.(driver.RootSourcer)
	// A live move whose root is copied gets its root on this host's pool too, made from the image
	// (so that a tree's copy sends only what differs) and then overwritten by the source.
	poolRoot := !post.Fresh() && post.Storage == api.StorageCopy && m.volumes != nil && canPool
	switch {
	case post.Fresh() || poolRoot:
		if h.Spec.Devices, err = m.freshRootDevice(ctx, h.Spec.Devices, post.Pool, post.Type, drv); err != nil {
			return nil, err
		}
		if post.Fresh() { // made here as a create would; the source fills the root
			h = driver.Handle{ID: uuid.NewString(), Driver: drvName, Spec: h.Spec}
			h.Spec.ID = h.ID
		}
		if err := m.checkNewRoot(ctx, post.Name, post.Type, h.Spec.Devices, false); err != nil {
			return nil, err
		}
	case !shared:
		for name, dev := range h.Spec.Devices {
			if isRootDisk(dev) {
				delete(h.Spec.Devices, name)
			}
		}
	}
	if m.images != nil {
		fp, err := m.images.Resolve(post.ImageFP, post.Type)
		if err != nil {
			return nil, err
		}
		if fp != post.ImageFP {
			return nil, errdefs.NotFound("image %s is not on this host", post.ImageFP)
		}
	}
	if _, err := m.store.GetInstance(post.Name); err == nil {
		return nil, errdefs.Exists("an instance named %q exists on this host", post.Name)
	}
	if err := m.lock(post.Name, "migration "+post.ID); err != nil {
		return nil, err
	}
	rec := &store.InstanceRecord{
		Name: post.Name, Type: post.Type, Image: post.Image, CreatedAt: post.Created,
		Desired:  store.DesiredState{Power: api.PowerStopped, Config: h.Spec.Config, Devices: h.Spec.Devices},
		Observed: store.ObservedState{Status: api.StatusUnknown, At: time.Now().UTC()},
		Handle:   &h,
		Pending:  pendingIncoming + post.ID,
	}
	if rec.CreatedAt.IsZero() {
		rec.CreatedAt = time.Now().UTC()
	}
	if err := m.store.CreateInstance(rec); err != nil {
		m.unlock(post.Name)
		return nil, err
	}
	in := &Incoming{Record: rec, Driver: drv, m: m}
	if m.images != nil {
		if err := m.images.Ref(post.ImageFP, imageUser(post.Name)); err != nil {
			in.Drop(ctx)
			return nil, err
		}
	}
	if err := m.attachNICs(ctx, post.Name, nil, rec.Desired.Devices); err != nil {
		m.store.DeleteInstance(post.Name)
		m.unrefImage(post.ImageFP, post.Name)
		m.unlock(post.Name)
		in.done = true
		return nil, err
	}
	switch {
	case post.Fresh():
		if err := m.createFresh(ctx, in); err != nil {
			in.Drop(ctx)
			return nil, err
		}
	case poolRoot:
		if err := m.makeRoot(ctx, rec, drv, newRoot); err != nil {
			in.Drop(ctx)
			return nil, fmt.Errorf("making the root of %s here: %w", rec.Name, err)
		}
		in.Save(ctx)
	case shared:
		if err := m.makeRoot(ctx, rec, drv, incomingRoot); err != nil {
			in.Drop(ctx)
			return nil, fmt.Errorf("the root on the shared pool: %w", err)
		}
		in.Save(ctx)
	}
	return in, nil
}

// freshRootDevice puts the root of an instance made anew here on this host's pool: the one
// asked for, else the source's pool if this host has one of that name, else the default pool.
func (m *Manager) freshRootDevice(ctx context.Context, devices api.Devices, pool, kind string, drv driver.Driver) (api.Devices, error) {
	if pool != "" && m.volumes == nil {
		return nil, errdefs.Unavailable("this host has no storage pools")
	}
	for name, dev := range devices {
		if !isRootDisk(dev) {
			continue
		}
		if m.volumes == nil {
			delete(devices, name)
			return devices, nil
		}
		dev = maps.Clone(dev)
		if pool != "" {
			dev["pool"] = pool
		} else if _, err := m.volumes.GetPool(ctx, diskPool(dev)); err != nil {
			dev["pool"] = defaultPool
		}
		devices[name] = dev
		return devices, nil
	}
	devices, err := m.withRoot(devices, kind, drv, false)
	if err == nil && pool != "" {
		for name, dev := range devices {
			if isRootDisk(dev) {
				devices[name]["pool"] = pool
			}
		}
	}
	return devices, err
}

// createFresh makes the root (from the image) and the driver's instance of an incoming record
// made anew; the source then overwrites the root's contents. On error Drop undoes the root.
func (m *Manager) createFresh(ctx context.Context, in *Incoming) error {
	rec := in.Record
	if err := m.makeRoot(ctx, rec, in.Driver, newRoot); err != nil {
		return fmt.Errorf("making the root of %s here: %w", rec.Name, err)
	}
	in.Save(ctx)
	spec := rec.Handle.Spec
	h, err := in.Driver.Create(ctx, &spec)
	if err != nil {
		return fmt.Errorf("making %s here: %w", rec.Name, err)
	}
	h.Driver = rec.Handle.Driver
	rec.Handle = h
	in.Save(ctx)
	return nil
}

// HoldRoot takes the lease on an instance's root disk (a move that did not happen resumes).
func (m *Manager) HoldRoot(ctx context.Context, rec *store.InstanceRecord) error {
	return m.holdRoot(ctx, rec)
}

// LetRootGo gives the lease on an instance's root disk back (a move hands the disk over).
func (m *Manager) LetRootGo(name string) { m.letRootGo(name) }

// ResumeIncoming takes up an incoming record a dead daemon left (recovery), to Drop or Finish it.
func (m *Manager) ResumeIncoming(rec *store.InstanceRecord) (*Incoming, error) {
	drv, err := m.drivers.ByName(handleDriver(rec))
	if err != nil {
		return nil, err
	}
	if err := m.lock(rec.Name, "migration "+IncomingID(rec)); err != nil {
		return nil, err
	}
	return &Incoming{Record: rec, Driver: drv, m: m}, nil
}

// Save persists the handle the driver changed.
func (in *Incoming) Save(ctx context.Context) {
	in.m.saveHandle(ctx, in.Record.Name, in.Driver, in.Record.Handle)
}

// Finish makes the instance this host's, with the given desired power.
func (in *Incoming) Finish(ctx context.Context, power string) error {
	if in.done {
		return errdefs.Conflict("migration of %s already ended", in.Record.Name)
	}
	_, err := in.m.store.UpdateInstance(in.Record.Name, func(r *store.InstanceRecord) error {
		r.Pending = ""
		r.Desired.Power = power
		r.Handle = in.Record.Handle
		return nil
	})
	if err != nil {
		return err
	}
	in.done = true
	in.m.saveHandle(ctx, in.Record.Name, in.Driver, in.Record.Handle)
	if power == api.PowerRunning {
		if err := in.m.holdRoot(ctx, in.Record); err != nil {
			slog.Warn("the arrived instance runs without its root disk's lease", "instance", in.Record.Name, "err", err)
		}
	}
	in.m.unlock(in.Record.Name)
	in.m.hub.Lifecycle("instance-arrived", in.Record.Name)
	return nil
}

// Drop forgets the instance: leases, image reference, record. The driver's part (Delete or
// AbortIncoming) is the caller's, before this.
func (in *Incoming) Drop(ctx context.Context) {
	if in.done {
		return
	}
	in.done = true
	m, rec := in.m, in.Record
	m.unplugNICs(ctx, rec.Name, rec.Desired.Devices)
	m.detachNICs(rec.Name, rec.Desired.Devices, allNICs(rec.Desired.Devices))
	if rec.Handle.Spec.Root != nil { // an adopted shared root stays the source's; a fresh one goes
		if err := m.deleteRoot(ctx, rec); err != nil {
			slog.Error("give back an adopted root", "instance", rec.Name, "err", err)
		}
	}
	m.unrefImage(rec.Handle.Spec.Image, rec.Name)
	if err := m.store.DeleteInstance(rec.Name); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		slog.Error("drop incoming instance record", "instance", rec.Name, "err", err)
	}
	m.unlock(rec.Name)
}

// DevicesForMove returns devices with each NIC pinned to its leased MAC and address, so the
// destination takes over the same identity.
func DevicesForMove(devices map[string]map[string]string, nics []api.NIC) map[string]map[string]string {
	out := cloneDevices(devices)
	for _, n := range nics {
		dev, ok := out[n.Name]
		if !ok || n.MAC == "" {
			continue
		}
		dev = maps.Clone(dev)
		dev["hwaddr"] = n.MAC
		if n.IPv4 != "" && n.IPv4 != "invalid IP" {
			dev["ipv4.address"] = n.IPv4
		}
		out[n.Name] = dev
	}
	return out
}

// DevicesForCopy returns devices without the NICs' MACs and addresses: a copy gets its own.
func DevicesForCopy(devices map[string]map[string]string) map[string]map[string]string {
	out := cloneDevices(devices)
	for name, dev := range out {
		if isNIC(dev) {
			dev = maps.Clone(dev)
			delete(dev, "hwaddr")
			delete(dev, "ipv4.address")
			out[name] = dev
		}
	}
	return out
}

// describeIncoming is for log lines.
func (in *Incoming) String() string {
	return fmt.Sprintf("%s (%s)", in.Record.Name, IncomingID(in.Record))
}

// Hold takes an instance outside an operation (a migration settled in the background).
func (m *Manager) Hold(name, holder string) (release func(), err error) {
	if err := m.lock(name, holder); err != nil {
		return nil, err
	}
	return func() { m.unlock(name) }, nil
}

// Record loads an instance and its driver.
func (m *Manager) Record(name string) (*store.InstanceRecord, driver.Driver, error) {
	return m.recordAndDriver(name)
}

// Observe records what is known of an instance's state when no driver call says it.
func (m *Manager) Observe(name, status, msg string) { m.observe(name, status, msg) }
