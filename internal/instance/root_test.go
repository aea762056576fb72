package instance

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
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

type rootHarness struct {
	*harness
	vols *fakeVolumes
	drv  *rootFake
}

// newRootHarness is a control plane whose driver puts roots on the fake storage's pools.
func newRootHarness(t *testing.T, dir string, vols *fakeVolumes) *rootHarness {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	hub := events.NewHub()
	ops := operations.NewManager(st, hub)
	fd, _ := fake.New(fake.Options{Dir: filepath.Join(dir, "fake")})
	drv := newRootFake(fd)
	reg := driver.NewRegistry()
	reg.Register("fake", drv, api.TypeContainer, api.TypeVM)
	m := NewManager(st, reg, ops, hub, nil)
	m.SetVolumes(vols)
	h := &harness{t: t, dir: dir, st: st, ops: ops, drv: fd, m: m}
	t.Cleanup(h.close)
	return &rootHarness{harness: h, vols: vols, drv: drv}
}

// run waits for an operation and returns its error ("" for success).
func (h *rootHarness) run(op *api.Operation, err error) string {
	h.t.Helper()
	if err != nil {
		return err.Error()
	}
	done := h.wait(op, nil)
	if done.Status != api.OpSuccess {
		return done.Err
	}
	return ""
}

func (h *rootHarness) mustRun(op *api.Operation, err error) {
	h.t.Helper()
	if msg := h.run(op, err); msg != "" {
		h.t.Fatal(msg)
	}
}

func (h *rootHarness) state(name string, action string, force bool) string {
	return h.run(h.m.ChangeState(context.Background(), name, api.InstanceStatePut{Action: action, Force: force}))
}

func (h *rootHarness) status(name string) string {
	h.t.Helper()
	inst, err := h.m.Get(context.Background(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	return inst.Status
}

func wantErr(t *testing.T, err error, kind error, words ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v: want kind %v", err, kind)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not say %q", err, w)
		}
	}
}

// An instance gets its root on the default pool, leased while it runs and deleted with it.
func TestRootOnDefaultPool(t *testing.T) {
	h := newRootHarness(t, t.TempDir(), newFakeVolumes())
	ctx := context.Background()
	h.launch("c1")
	rec, _ := h.st.GetInstance("c1")
	r := rec.Handle.Spec.Root
	if r == nil || r.Pool != "default" || r.Volume != "container/c1" || r.Format != driver.RootDir || r.Shared {
		t.Fatalf("root %+v", r)
	}
	if rec.Desired.Devices["root"]["path"] != "/" || h.drv.roots[rec.Handle.ID] == nil {
		t.Fatalf("devices %v, the driver saw root %+v", rec.Desired.Devices, h.drv.roots[rec.Handle.ID])
	}
	if inst, _ := h.m.Get(ctx, "c1"); inst.Root == nil || inst.Root.Volume != "container/c1" {
		t.Fatalf("API root %+v", inst.Root)
	}
	if got, err := h.m.RootDisk(ctx, "c1"); err != nil || got.Path != "/pools/default/container/c1" {
		t.Fatalf("RootDisk %+v %v", got, err)
	}
	if !h.vols.leased("default", "container/c1") {
		t.Fatal("a running instance holds no lease on its root")
	}
	if msg := h.state("c1", api.ActionStop, true); msg != "" {
		t.Fatal(msg)
	}
	if h.vols.leased("default", "container/c1") {
		t.Fatal("a stopped instance keeps its root's lease")
	}
	h.mustRun(h.m.Delete(ctx, "c1", false))
	if len(h.vols.vols) != 0 {
		t.Fatalf("delete left %v", h.vols.vols)
	}

	// A VM on a shared pool, with a size.
	h.mustRun(h.m.Create(ctx, api.InstancesPost{Name: "v1", Type: api.TypeVM, Image: "img",
		Config: map[string]string{"limits.disk": "2GiB"}, Devices: api.Devices{"root": {"type": "disk", "path": "/", "pool": "sh"}}}))
	rec, _ = h.st.GetInstance("v1")
	if r := rec.Handle.Spec.Root; r.Format != driver.RootQcow2 || !r.Shared || h.vols.vols["sh/vm/v1"].Size != 2<<30 {
		t.Fatalf("VM root %+v, volume %+v", r, h.vols.vols["sh/vm/v1"])
	}
}

// Whatever step of a create fails, neither a record, a root volume nor a lease is left, and a
// request that cannot work is refused before anything starts.
func TestRootCreateFailures(t *testing.T) {
	h := newRootHarness(t, t.TempDir(), newFakeVolumes())
	ctx := context.Background()
	post := func(name string, devs api.Devices, existing bool) (*api.Operation, error) {
		return h.m.Create(ctx, api.InstancesPost{Name: name, Image: "img", Devices: devs, ExistingRoot: existing, Start: true})
	}
	_, err := post("c1", api.Devices{"root": {"type": "disk", "path": "/", "pool": "nope"}}, false)
	wantErr(t, err, errdefs.ErrNotFound, "nope")
	_, err = post("c1", api.Devices{"r": {"type": "disk", "path": "/", "source": "x"}}, false)
	wantErr(t, err, errdefs.ErrInvalidArgument, "takes pool and size")
	_, err = h.m.Create(ctx, api.InstancesPost{Name: "c1", Image: "img", Config: map[string]string{"limits.disk": "1GiB"},
		Devices: api.Devices{"root": {"type": "disk", "path": "/", "size": "2GiB"}}})
	wantErr(t, err, errdefs.ErrInvalidArgument, "disagree")
	_, err = post("c1", nil, true)
	wantErr(t, err, errdefs.ErrNotFound, "existing root")

	h.drv.failCreate = errors.New("boom")
	if msg := h.run(post("c1", nil, false)); !strings.Contains(msg, "boom") {
		t.Fatalf("create: %q", msg)
	}
	h.drv.failCreate = nil
	h.vols.fail["CreateInstanceRoot"] = errdefs.Invalid("pool full")
	if msg := h.run(post("c2", nil, false)); !strings.Contains(msg, "pool full") {
		t.Fatalf("create: %q", msg)
	}
	h.vols.fail["Acquire"] = errdefs.Conflict("in use by c3 on host far")
	if msg := h.run(post("c3", nil, false)); !strings.Contains(msg, "host far") {
		t.Fatalf("create: %q", msg)
	}
	for _, n := range []string{"c1", "c2", "c3"} {
		if _, err := h.st.GetInstance(n); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("%s left a record: %v", n, err)
		}
	}
	if len(h.vols.vols) != 0 || len(h.vols.leases) != 0 || h.drv.Count() != 0 {
		t.Fatalf("left volumes %v, leases %v, %d driver instances", h.vols.vols, h.vols.leases, h.drv.Count())
	}

	// A root another host made on a shared pool: refused unless adopted; the adopted one stays
	// with the other host's instance when this one goes.
	h.vols.CreateInstanceRoot(ctx, "sh", "c4", "container", storageSource(), 0)
	sh := api.Devices{"root": {"type": "disk", "path": "/", "pool": "sh"}}
	_, err = post("c4", sh, false)
	wantErr(t, err, errdefs.ErrAlreadyExists, "existing-root")
	h.vols.vols["sh/container/c4"].UsedBy[0].Host = "far"
	h.mustRun(post("c4", sh, true))
	h.mustRun(h.m.Delete(ctx, "c4", true))
	if v := h.vols.vols["sh/container/c4"]; v == nil || len(v.UsedBy) != 1 {
		t.Fatalf("the other host's root after delete: %+v", v)
	}
}

// Another host holding the root disk stops a start; the instance stays stopped and can start
// once the disk is free.
func TestRootLeaseHeldElsewhere(t *testing.T) {
	h := newRootHarness(t, t.TempDir(), newFakeVolumes())
	ctx := context.Background()
	h.mustRun(h.m.Create(ctx, api.InstancesPost{Name: "c1", Image: "img"}))
	h.vols.leases["default/container/c1"] = "elsewhere"
	if msg := h.state("c1", api.ActionStart, false); !strings.Contains(msg, "in use by elsewhere") {
		t.Fatalf("start: %q", msg)
	}
	if rec, _ := h.st.GetInstance("c1"); rec.Desired.Power != api.PowerStopped || h.status("c1") != api.StatusStopped {
		t.Fatalf("after a refused start: %+v", rec.Desired)
	}
	delete(h.vols.leases, "default/container/c1")
	if msg := h.state("c1", api.ActionStart, false); msg != "" {
		t.Fatal(msg)
	}
	// It shuts itself down: the next look at it gives the disk back.
	rec, _ := h.st.GetInstance("c1")
	h.drv.Stop(ctx, rec.Handle, driver.StopOpts{Force: true})
	if h.status("c1") != api.StatusStopped || h.vols.leased("default", "container/c1") {
		t.Fatal("an instance that stopped by itself keeps its root's lease")
	}
}

// limits.disk (or the root device's size) grows a stopped instance's root; shrinking, removing
// the limit, changing a running instance's, or moving the root are refused.
func TestRootResize(t *testing.T) {
	h := newRootHarness(t, t.TempDir(), newFakeVolumes())
	ctx := context.Background()
	h.mustRun(h.m.Create(ctx, api.InstancesPost{Name: "c1", Image: "img", Start: true, Config: map[string]string{"limits.disk": "1GiB"}}))
	set := func(v *string) error {
		_, err := h.m.Patch(ctx, "c1", api.InstancePatch{Config: map[string]*string{"limits.disk": v}})
		return err
	}
	two, half := "2GiB", "512MiB"
	wantErr(t, set(&two), errdefs.ErrConflict, "stop it")
	if msg := h.state("c1", api.ActionStop, true); msg != "" {
		t.Fatal(msg)
	}
	if err := set(&two); err != nil {
		t.Fatal(err)
	}
	if v := h.vols.vols["default/container/c1"]; v.Size != 2<<30 {
		t.Fatalf("root size %d", v.Size)
	}
	wantErr(t, set(&half), errdefs.ErrInvalidArgument, "not shrink")
	wantErr(t, set(nil), errdefs.ErrInvalidArgument, "cannot be removed")
	_, err := h.m.Patch(ctx, "c1", api.InstancePatch{Devices: map[string]map[string]string{"root": {"type": "disk", "path": "/", "pool": "sh"}}})
	wantErr(t, err, errdefs.ErrInvalidArgument, "not supported")
	_, err = h.m.Patch(ctx, "c1", api.InstancePatch{Devices: map[string]map[string]string{"root": nil}})
	wantErr(t, err, errdefs.ErrInvalidArgument, "cannot be removed")
	// The root device's size is the other way to say it.
	if _, err := h.m.Patch(ctx, "c1", api.InstancePatch{Config: map[string]*string{"limits.disk": nil},
		Devices: map[string]map[string]string{"root": {"type": "disk", "path": "/", "pool": "default", "size": "3GiB"}}}); err != nil {
		t.Fatal(err)
	}
	if v := h.vols.vols["default/container/c1"]; v.Size != 3<<30 {
		t.Fatalf("root size %d", v.Size)
	}
	// A failed resize leaves the config as it was.
	h.vols.fail["ResizeVolume"] = errdefs.Invalid("no room")
	_, err = h.m.Patch(ctx, "c1", api.InstancePatch{Devices: map[string]map[string]string{"root": {"type": "disk", "path": "/", "pool": "default", "size": "4GiB"}}})
	wantErr(t, err, errdefs.ErrInvalidArgument, "no room")
	if rec, _ := h.st.GetInstance("c1"); rec.Desired.Devices["root"]["size"] != "3GiB" {
		t.Fatalf("devices after a failed resize: %v", rec.Desired.Devices)
	}
}

// Snapshots: a running instance is paused for its disk snapshot; restore stops, restores and
// starts it again; a stateful snapshot's restore resumes its memory; deletes remove both halves.
func TestSnapshots(t *testing.T) {
	h := newRootHarness(t, t.TempDir(), newFakeVolumes())
	ctx := context.Background()
	h.launch("c1")
	snap := func(name string, stateful bool) string {
		return h.run(h.m.CreateSnapshot(ctx, "c1", api.InstanceSnapshotsPost{Name: name, Stateful: stateful}))
	}
	if msg := snap("s0", false); msg != "" {
		t.Fatal(msg)
	}
	if h.drv.paused != 1 || h.status("c1") != api.StatusRunning {
		t.Fatalf("paused %d times, now %s", h.drv.paused, h.status("c1"))
	}
	if msg := snap("s1", true); msg != "" {
		t.Fatal(msg)
	}
	_, err := h.m.CreateSnapshot(ctx, "c1", api.InstanceSnapshotsPost{Name: "s1"})
	wantErr(t, err, errdefs.ErrAlreadyExists)
	_, err = h.m.CreateSnapshot(ctx, "c1", api.InstanceSnapshotsPost{Name: "../x"})
	wantErr(t, err, errdefs.ErrInvalidArgument)
	list, err := h.m.Snapshots(ctx, "c1")
	if err != nil || len(list) != 2 || list[0].Name != "s0" || list[0].Stateful || !list[1].Stateful {
		t.Fatalf("snapshots %+v %v", list, err)
	}

	// A restore of a running instance: stopped, restored, started (booted, not resumed).
	rec, _ := h.st.GetInstance("c1")
	startsBefore := h.drv.Starts(rec.Handle)
	h.mustRun(h.m.RestoreSnapshot(ctx, "c1", "s0"))
	if h.status("c1") != api.StatusRunning || h.drv.Starts(rec.Handle) != startsBefore+1 || h.drv.resumed[rec.Handle.ID] != "" {
		t.Fatalf("after restore: %s, resumed %q", h.status("c1"), h.drv.resumed[rec.Handle.ID])
	}
	// A stateful one on a stopped instance: started from the saved memory.
	if msg := h.state("c1", api.ActionStop, true); msg != "" {
		t.Fatal(msg)
	}
	_, err = h.m.CreateSnapshot(ctx, "c1", api.InstanceSnapshotsPost{Name: "s2", Stateful: true})
	wantErr(t, err, errdefs.ErrConflict, "needs it running")
	h.mustRun(h.m.RestoreSnapshot(ctx, "c1", "s1"))
	if h.status("c1") != api.StatusRunning || h.drv.resumed[rec.Handle.ID] != "s1" {
		t.Fatalf("after a stateful restore: %s, resumed %q", h.status("c1"), h.drv.resumed[rec.Handle.ID])
	}
	_, err = h.m.RestoreSnapshot(ctx, "c1", "nope")
	wantErr(t, err, errdefs.ErrNotFound)

	// A failed restore leaves it running.
	h.vols.fail["RestoreVolume"] = errdefs.Conflict("disk trouble")
	if msg := h.run(h.m.RestoreSnapshot(ctx, "c1", "s0")); !strings.Contains(msg, "disk trouble") || h.status("c1") != api.StatusRunning {
		t.Fatalf("failed restore: %q, %s", msg, h.status("c1"))
	}
	// A failed disk snapshot or state dump leaves no snapshot, and the instance running.
	h.vols.fail["SnapshotVolume"] = errdefs.Invalid("full")
	if msg := snap("s3", false); !strings.Contains(msg, "full") {
		t.Fatalf("snapshot: %q", msg)
	}
	h.drv.failState = errors.New("criu says no")
	if msg := snap("s3", true); !strings.Contains(msg, "criu says no") || h.status("c1") != api.StatusRunning {
		t.Fatalf("stateful snapshot: %q, %s", msg, h.status("c1"))
	}
	if list, _ := h.m.Snapshots(ctx, "c1"); len(list) != 2 {
		t.Fatalf("failed snapshots left %+v", list)
	}

	h.mustRun(h.m.DeleteSnapshot(ctx, "c1", "s1"))
	if list, _ := h.m.Snapshots(ctx, "c1"); len(list) != 1 || len(h.drv.states[rec.Handle.ID]) != 0 {
		t.Fatalf("after delete: %+v, states %v", list, h.drv.states)
	}
	h.mustRun(h.m.Delete(ctx, "c1", true))
	if len(h.vols.vols) != 0 || len(h.vols.leases) != 0 {
		t.Fatalf("left %v %v", h.vols.vols, h.vols.leases)
	}
}

// A restart keeps running instances' leases; an interrupted create or delete leaves no root.
func TestRootRecovery(t *testing.T) {
	dir := t.TempDir()
	vols := newFakeVolumes()
	h := newRootHarness(t, dir, vols)
	ctx := context.Background()
	h.launch("runs")
	h.launch("halfcreated")
	h.launch("halfdeleted")
	for _, n := range []string{"halfcreated", "halfdeleted"} {
		h.state(n, api.ActionStop, true)
	}
	h.st.UpdateInstance("halfcreated", func(r *store.InstanceRecord) error { r.Pending = store.PendingCreate; return nil })
	h.st.UpdateInstance("halfdeleted", func(r *store.InstanceRecord) error { r.Pending = store.PendingDelete; return nil })
	h.close()
	// The process died: its leases went with its locks, the running instance still runs.
	vols.leases = map[string]string{}

	h2 := newRootHarness(t, dir, vols)
	if err := h2.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if !vols.leased("default", "container/runs") || h2.status("runs") != api.StatusRunning {
		t.Fatal("recovery did not take back the running instance's lease")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(vols.vols) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(vols.vols) != 1 || vols.vols["default/container/runs"] == nil {
		t.Fatalf("volumes after recovery: %v", vols.vols)
	}
}

// A daemon killed while a snapshot has the instance paused leaves it paused with desired running.
// The pause is recorded as the snapshot's, so recovery undoes it; a pause the user asked for stays.
func TestRecoveryUndoesSnapshotPause(t *testing.T) {
	dir := t.TempDir()
	vols := newFakeVolumes()
	gate := make(chan struct{})
	defer close(gate) // lets the first daemon's snapshot goroutine end after the test
	h := newRootHarness(t, dir, vols)
	ctx := context.Background()
	h.launch("snapped")
	h.launch("userpaused")
	h.mustRun(h.m.ChangeState(ctx, "userpaused", api.InstanceStatePut{Action: api.ActionPause}))

	vols.snapGate = gate
	if _, err := h.m.CreateSnapshot(ctx, "snapped", api.InstanceSnapshotsPost{Name: "s1"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.status("snapped") != api.StatusPaused {
		if time.Now().After(deadline) {
			t.Fatal("the snapshot did not pause the instance")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rec, _ := h.st.GetInstance("snapped"); rec.PausedBy != store.PausedBySnapshot {
		t.Fatalf("mid-snapshot record: paused_by %q, want %q", rec.PausedBy, store.PausedBySnapshot)
	}
	// The crash: the state file is let go with the snapshot still in its copy; nothing resumes.
	h.st.Close()
	vols.leases = map[string]string{}

	h2 := newRootHarness(t, dir, vols)
	if err := h2.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h2.status("snapped"); got != api.StatusRunning {
		t.Fatalf("after recovery the snapshot's instance is %s, want Running", got)
	}
	if rec, _ := h2.st.GetInstance("snapped"); rec.PausedBy != "" || rec.Desired.Power != api.PowerRunning {
		t.Fatalf("after recovery: paused_by %q desired %q", rec.PausedBy, rec.Desired.Power)
	}
	if got := h2.status("userpaused"); got != api.StatusPaused {
		t.Fatalf("the user's pause was undone: %s", got)
	}
}

// A daemon killed between recording an attachment on the volume and on the instance leaves a stale
// used_by (or, cut short in a detach, an instance whose volume forgot it). Recovery makes the
// volumes agree with the instance records, and leaves attachments to unknown instances alone.
func TestRecoveryReconcilesAttachments(t *testing.T) {
	dir := t.TempDir()
	vols := newFakeVolumes()
	vols.addCustom("default", "stale")
	vols.addCustom("default", "lost")
	vols.addCustom("default", "ghost")
	h := newRootHarness(t, dir, vols)
	ctx := context.Background()
	h.launch("c1")
	h.mustRun(h.m.Create(ctx, api.InstancesPost{Name: "c2", Image: "busybox",
		Devices: api.Devices{"data": {"type": "disk", "source": "lost", "path": "/mnt"}}}))
	if u := vols.usedBy("default", "lost"); len(u) != 1 || u[0].Instance != "c2" {
		t.Fatalf("create did not attach: %+v", u)
	}
	// What the crashes left: "stale" attached to c1 whose record never got the disk, "lost"
	// forgotten by the volume while c2 has it, "ghost" attached to an instance nobody knows.
	vols.Attach(ctx, "default", "stale", "c1", false)
	vols.Detach(ctx, "default", "lost", "c2")
	vols.Attach(ctx, "default", "ghost", "nobody", false)
	h.close()
	vols.leases = map[string]string{}

	h2 := newRootHarness(t, dir, vols)
	if err := h2.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if u := vols.usedBy("default", "stale"); len(u) != 0 {
		t.Fatalf("stale attachment kept: %+v", u)
	}
	if u := vols.usedBy("default", "lost"); len(u) != 1 || u[0].Instance != "c2" {
		t.Fatalf("lost attachment not recorded again: %+v", u)
	}
	if u := vols.usedBy("default", "ghost"); len(u) != 1 || u[0].Instance != "nobody" {
		t.Fatalf("attachment to an unknown instance was touched: %+v", u)
	}
}

// loseStateFile is a daemon killed and restarted on a new, empty state file: its guests and their
// roots stay, its leases went with the process.
func (h *rootHarness) loseStateFile() *rootHarness {
	h.t.Helper()
	h.close()
	h.vols.leases = map[string]string{}
	if err := os.Remove(filepath.Join(h.dir, "state.db")); err != nil {
		h.t.Fatal(err)
	}
	return newRootHarness(h.t, h.dir, h.vols)
}

// With its record lost (a deleted or replaced state file), a running guest and its root are
// reported as orphans at the next start, named from the record's copy, and nothing else is.
func TestOrphansAfterLostRecord(t *testing.T) {
	dir := t.TempDir()
	vols := newFakeVolumes()
	h := newRootHarness(t, dir, vols)
	ctx := context.Background()
	h.launch("kept")
	h.launch("lost")
	kept, _ := h.st.GetInstance("kept")
	rec, _ := h.st.GetInstance("lost")
	h2 := h.loseStateFile()
	if err := h2.st.CreateInstance(kept); err != nil { // the new state file knows only this one
		t.Fatal(err)
	}
	if err := h2.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := h2.m.Orphans(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []api.Orphan{
		{Kind: "instance", Driver: "fake", ID: rec.Handle.ID, Status: api.StatusRunning, Name: "lost"},
		{Kind: "root", Name: "lost", Pool: "default", Volume: "container/lost"},
	}
	if len(got) != len(want) {
		t.Fatalf("orphans %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("orphan %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// The volume of the lost root is left as it was.
	if u := vols.vols["default/container/lost"]; u == nil || len(u.UsedBy) != 1 {
		t.Fatalf("lost root touched: %+v", u)
	}
}

// With the state file lost, `tandemd --recover` re-adopts the running guest from its record copy:
// it is listed again, running, with its root taken back, and nothing is left orphaned.
func TestReadoptAfterLostStateFile(t *testing.T) {
	dir := t.TempDir()
	vols := newFakeVolumes()
	h := newRootHarness(t, dir, vols)
	ctx := context.Background()
	h.launch("c1")
	h2 := h.loseStateFile()
	if list, _ := h2.m.List(ctx); len(list) != 0 {
		t.Fatalf("a new state file lists %+v", list)
	}
	names, err := h2.m.Readopt(ctx)
	if err != nil || len(names) != 1 || names[0] != "c1" {
		t.Fatalf("readopt: %v %v", names, err)
	}
	if err := h2.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if got := h2.status("c1"); got != api.StatusRunning {
		t.Fatalf("re-adopted c1 is %s", got)
	}
	if !vols.leased("default", "container/c1") {
		t.Fatal("the re-adopted instance's root lease was not taken back")
	}
	if orphans, err := h2.m.Orphans(ctx); err != nil || len(orphans) != 0 {
		t.Fatalf("orphans after re-adoption: %+v %v", orphans, err)
	}
	// Again: nothing more to take.
	if names, err := h2.m.Readopt(ctx); err != nil || len(names) != 0 {
		t.Fatalf("second readopt: %v %v", names, err)
	}
	// A deleted instance's copy goes with it: nothing to re-adopt later.
	h2.mustRun(h2.m.Delete(ctx, "c1", true))
	if recs, _ := h2.st.BackupRecords(); len(recs) != 0 {
		t.Fatalf("copies left after delete: %+v", recs)
	}
}

// A launch or copy onto a name in use says the instance exists, not that its root does.
func TestCreateOntoExistingName(t *testing.T) {
	h := newRootHarness(t, t.TempDir(), newFakeVolumes())
	ctx := context.Background()
	h.launch("c1")
	h.mustRun(h.m.Create(ctx, api.InstancesPost{Name: "c2", Image: "busybox"}))
	_, err := h.m.Create(ctx, api.InstancesPost{Name: "c1", Image: "busybox", Start: true})
	wantErr(t, err, errdefs.ErrAlreadyExists, `instance "c1" already exists`)
	if strings.Contains(err.Error(), "root volume") {
		t.Fatalf("error talks of the root: %v", err)
	}
	_, err = h.m.Copy(ctx, "c2", api.InstanceCopyPost{Name: "c1"})
	wantErr(t, err, errdefs.ErrAlreadyExists, `instance "c1" already exists`)
	if h.status("c1") != api.StatusRunning {
		t.Fatalf("c1 is %s after the refused creates", h.status("c1"))
	}
}
