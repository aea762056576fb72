package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/driver/container"
	"tandem/internal/driver/fake"
	"tandem/internal/events"
	"tandem/internal/instance"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// fakeMover is the fake driver with the container driver's migration calls, recorded.
type fakeMover struct {
	*fake.Driver
	dir         string
	mu          sync.Mutex
	calls       []string
	failRestore error
	// Lazy restores: lazyRefusal is the driver's refusal; a lazy Restore dials the page server
	// address it was given (as CRIU's lazy-pages daemon does) and hands the connection over.
	lazyRefusal string
	lazyConn    chan net.Conn
	lazyDone    chan error
}

func (f *fakeMover) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *fakeMover) called(call string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c == call {
			return true
		}
	}
	return false
}

func (f *fakeMover) Adopt(ctx context.Context, h *driver.Handle, o container.AdoptOpts) error {
	f.record("adopt")
	_, err := f.Driver.Create(ctx, &h.Spec)
	return err
}
func (f *fakeMover) RootfsPath(h *driver.Handle) string { return filepath.Join(f.dir, h.ID) }
func (f *fakeMover) Restore(ctx context.Context, h *driver.Handle, o container.RestoreOpts) (container.RestoreStats, error) {
	f.record("restore")
	if f.failRestore != nil {
		return container.RestoreStats{}, f.failRestore
	}
	var stats container.RestoreStats
	if o.Lazy {
		c, err := net.Dial("tcp", o.PageServerAddr)
		if err != nil {
			return stats, err
		}
		f.lazyConn <- c
		stats.LazyDone = f.lazyDone
	}
	return stats, f.Driver.Start(ctx, h)
}
func (f *fakeMover) Delete(ctx context.Context, h *driver.Handle) error {
	f.record("delete")
	return f.Driver.Delete(ctx, h)
}
func (f *fakeMover) Dump(context.Context, *driver.Handle, container.DumpOpts) (container.DumpStats, error) {
	return container.DumpStats{}, errors.New("not here")
}
func (f *fakeMover) CommitDump(context.Context, *driver.Handle) error { return nil }
func (f *fakeMover) AbortDump(context.Context, *driver.Handle) error  { return nil }
func (f *fakeMover) Release(context.Context, *driver.Handle, container.ReleaseOpts) error {
	return nil
}
func (f *fakeMover) MarkMoved(context.Context, *driver.Handle) error   { return nil }
func (f *fakeMover) UnmountRoot(context.Context, *driver.Handle) error { return nil }
func (f *fakeMover) RootTree(_ context.Context, h *driver.Handle) (string, func() error, error) {
	f.record("roottree")
	dir := f.RootfsPath(h)
	return dir, func() error { f.record("release-tree"); return nil }, os.MkdirAll(dir, 0o755)
}
func (f *fakeMover) LazyDumpRefusal() string                             { return "fake" }
func (f *fakeMover) LazyRestoreRefusal(*driver.Handle) string            { return f.lazyRefusal }
func (f *fakeMover) WaitLazyPages(context.Context, *driver.Handle) error { return nil }
func (f *fakeMover) MigrationFeatures(context.Context) container.MigrationFeatures {
	return container.MigrationFeatures{CRIU: true}
}

type destHarness struct {
	e   *Engine
	st  *store.Store
	m   *instance.Manager
	drv *fakeMover
}

func newDest(t *testing.T) *destHarness {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	hub := events.NewHub()
	ops := operations.NewManager(st, hub)
	t.Cleanup(func() { ops.Shutdown(5 * time.Second) })
	fd, _ := fake.New(fake.Options{Dir: filepath.Join(dir, "fake")})
	drv := &fakeMover{Driver: fd, dir: filepath.Join(dir, "roots"), lazyRefusal: "CRIU has no userfaultfd support on this kernel",
		lazyConn: make(chan net.Conn, 1), lazyDone: make(chan error, 1)}
	reg := driver.NewRegistry()
	reg.Register("fake", drv, api.TypeContainer)
	m := instance.NewManager(st, reg, ops, hub, nil)
	e := New(Config{Instances: m, Store: st, Dir: filepath.Join(dir, "mig"), RunDir: filepath.Join(dir, "run")})
	m.SetMigrationRecovery(e)
	return &destHarness{e: e, st: st, m: m, drv: drv}
}

func validPost(t *testing.T) api.MigrationPost {
	id := uuid.NewString()
	h, _ := json.Marshal(driver.Handle{ID: id, Driver: "fake", Spec: driver.Spec{ID: id, Name: "c1", Type: api.TypeContainer}})
	return api.MigrationPost{ID: uuid.NewString(), Kind: api.MigrationMove, Live: true, Storage: api.StorageCopy,
		Name: "c1", Type: api.TypeContainer, Image: "busybox", ImageFP: "busybox", Handle: h}
}

func (d *destHarness) records(t *testing.T) int {
	t.Helper()
	recs, err := d.st.ListInstances()
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

func TestPrepareRefusesBadInputAndTouchesNothing(t *testing.T) {
	d := newDest(t)
	for name, mutate := range map[string]func(*api.MigrationPost){
		"id":            func(p *api.MigrationPost) { p.ID = "../../etc" },
		"kind":          func(p *api.MigrationPost) { p.Kind = "steal" },
		"storage":       func(p *api.MigrationPost) { p.Storage = "nfs" },
		"shared nopath": func(p *api.MigrationPost) { p.Storage = api.StorageShared },
		"name":          func(p *api.MigrationPost) { p.Name = "a/b" },
		"type":          func(p *api.MigrationPost) { p.Type = "zone" },
		"handle":        func(p *api.MigrationPost) { p.Handle = json.RawMessage(`"x"`) },
		"memory":        func(p *api.MigrationPost) { p.Memory = 1 << 60 },
	} {
		p := validPost(t)
		mutate(&p)
		if _, err := d.e.Prepare(context.Background(), p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n := d.records(t); n != 0 {
		t.Fatalf("refused migrations left %d records", n)
	}
	if d.drv.called("adopt") {
		t.Fatal("a refused migration reached the driver")
	}
}

func TestIncomingRestoreThenCommit(t *testing.T) {
	d := newDest(t)
	ctx := context.Background()
	p := validPost(t)
	if _, err := d.e.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := d.e.Prepare(ctx, p); err == nil {
		t.Fatal("the same migration prepared twice")
	}
	if _, err := d.e.Commit(ctx, p.ID); err == nil {
		t.Fatal("committed before the restore")
	}
	if info, err := d.e.Restore(ctx, p.ID, api.MigrationRestorePost{}); err != nil || info.Status != api.MigrationRunning {
		t.Fatalf("restore: %+v %v", info, err)
	}
	rec, _ := d.st.GetInstance("c1")
	if instance.IncomingID(rec) != p.ID {
		t.Fatalf("record before the commit: pending %q", rec.Pending)
	}
	if _, err := d.e.Commit(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	rec, _ = d.st.GetInstance("c1")
	if rec.Pending != "" || rec.Desired.Power != api.PowerRunning || rec.Observed.Status != api.StatusRunning {
		t.Fatalf("record after the commit: %+v", rec)
	}
	if st, _ := d.e.Status(p.ID); st.Status != api.MigrationCommitted {
		t.Fatalf("status %+v", st)
	}
	if err := d.e.Abort(ctx, p.ID); err == nil {
		t.Fatal("a committed migration was aborted")
	}
}

func TestIncomingWatchdogDropsWhatTheSourceNeverCommits(t *testing.T) {
	defer func(c time.Duration) { CommitTimeout = c }(CommitTimeout)
	CommitTimeout = time.Second
	d := newDest(t)
	ctx := context.Background()
	p := validPost(t)
	if _, err := d.e.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := d.e.Restore(ctx, p.ID, api.MigrationRestorePost{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, _ := d.e.Status(p.ID); st != nil && st.Status == api.MigrationAborted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watchdog did not drop the uncommitted instance")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d.records(t) != 0 || !d.drv.called("delete") || d.drv.Count() != 0 {
		t.Fatalf("left: %d records, driver calls %v, %d fake instances", d.records(t), d.drv.calls, d.drv.Count())
	}
	// The name is free again.
	if _, err := d.e.Prepare(ctx, validPost(t)); err != nil {
		t.Fatal(err)
	}
}

func TestIncomingFailedRestoreLeavesNothing(t *testing.T) {
	d := newDest(t)
	d.drv.failRestore = errors.New("criu: bad image")
	ctx := context.Background()
	p := validPost(t)
	if _, err := d.e.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := d.e.Restore(ctx, p.ID, api.MigrationRestorePost{}); err == nil {
		t.Fatal("restore succeeded")
	}
	if d.records(t) != 0 || d.drv.Count() != 0 {
		t.Fatalf("a failed restore left %d records, %d driver instances", d.records(t), d.drv.Count())
	}
	if st, _ := d.e.Status(p.ID); st == nil || st.Status != api.MigrationAborted {
		t.Fatalf("status after a failed restore: %+v", st)
	}
	if entries, _ := os.ReadDir(filepath.Join(d.e.Dir, "incoming")); len(entries) != 0 {
		t.Fatalf("files left: %v", entries)
	}
}

func TestRestartDropsUncommittedIncoming(t *testing.T) {
	d := newDest(t)
	ctx := context.Background()
	p := validPost(t)
	if _, err := d.e.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := d.e.Restore(ctx, p.ID, api.MigrationRestorePost{}); err != nil {
		t.Fatal(err)
	}
	// A new control plane and engine on the same state: the daemon restarted before the commit.
	m := instance.NewManager(d.st, registryOf(d.drv), operations.NewManager(d.st, events.NewHub()), events.NewHub(), nil)
	e := New(Config{Instances: m, Store: d.st, Dir: d.e.Dir, RunDir: d.e.RunDir})
	m.SetMigrationRecovery(e)
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if d.records(t) != 0 || d.drv.Count() != 0 {
		t.Fatalf("after the restart: %d records, %d driver instances", d.records(t), d.drv.Count())
	}
	if st, err := e.Status(p.ID); err != nil || st.Status != api.MigrationAborted {
		t.Fatalf("the restarted engine says %+v %v", st, err)
	}
}

func registryOf(d driver.Driver) *driver.Registry {
	reg := driver.NewRegistry()
	reg.Register("fake", d, api.TypeContainer)
	return reg
}

// A stopped instance whose root is copied is made anew here: its own handle, created (not
// adopted), its root tree readied for the source; a copy gets its own NICs and stays stopped.
func TestIncomingColdCopyIsMadeAnew(t *testing.T) {
	d := newDest(t)
	ctx := context.Background()
	p := validPost(t)
	p.Kind, p.Live, p.Name = api.MigrationCopy, false, "c1-copy"
	info, err := d.e.Prepare(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if d.drv.called("adopt") || !d.drv.called("roottree") {
		t.Fatalf("driver calls %v: want a create and the root tree, no adopt", d.drv.calls)
	}
	rec, _ := d.st.GetInstance("c1-copy")
	var src driver.Handle
	json.Unmarshal(p.Handle, &src)
	if rec.Handle.ID == src.ID || rec.Handle.Spec.ID != rec.Handle.ID || rec.Handle.Spec.Name != "c1-copy" {
		t.Fatalf("handle %+v: want a fresh one for c1-copy", rec.Handle)
	}
	if info.Rootfs != d.drv.RootfsPath(rec.Handle) {
		t.Fatalf("root to fill %q, want the new instance's %q", info.Rootfs, d.drv.RootfsPath(rec.Handle))
	}
	if _, err := d.e.Restore(ctx, p.ID, api.MigrationRestorePost{}); err != nil {
		t.Fatal(err)
	}
	if !d.drv.called("release-tree") || d.drv.called("restore") {
		t.Fatalf("driver calls %v: want the tree released and nothing restored", d.drv.calls)
	}
	if _, err := d.e.Commit(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	rec, _ = d.st.GetInstance("c1-copy")
	if rec.Pending != "" || rec.Desired.Power != api.PowerStopped {
		t.Fatalf("record after the commit: %+v", rec)
	}
}

// An aborted cold reception deletes what it made.
func TestIncomingColdAbortDeletes(t *testing.T) {
	d := newDest(t)
	ctx := context.Background()
	p := validPost(t)
	p.Live = false
	if _, err := d.e.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := d.e.Abort(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if !d.drv.called("delete") || !d.drv.called("release-tree") {
		t.Fatalf("driver calls %v: want the tree released and the instance deleted", d.drv.calls)
	}
	if n := d.records(t); n != 0 {
		t.Fatalf("%d records left", n)
	}
}

// A destination that can restore lazily offers it; one that cannot says why.
func TestPrepareOffersLazy(t *testing.T) {
	d := newDest(t)
	info, err := d.e.Prepare(context.Background(), validPost(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Modes) != 0 || len(info.Notes) != 1 || info.Notes[0] != "lazy pages: CRIU has no userfaultfd support on this kernel" {
		t.Fatalf("modes %v notes %v", info.Modes, info.Notes)
	}
	d2 := newDest(t)
	d2.drv.lazyRefusal = ""
	if info, err = d2.e.Prepare(context.Background(), validPost(t)); err != nil || len(info.Modes) != 1 || info.Modes[0] != "lazy" {
		t.Fatalf("modes %+v %v", info, err)
	}
}

// A lazy restore: the lazy-pages daemon's connection reaches the tunnel the source parked; while
// pages flow the watchdog keeps the copy past CommitTimeout; a failed transfer before the commit
// drops it.
func TestIncomingLazyRestore(t *testing.T) {
	defer func(c time.Duration) { CommitTimeout = c }(CommitTimeout)
	CommitTimeout = time.Second
	d := newDest(t)
	d.drv.lazyRefusal = ""
	ctx := context.Background()
	p := validPost(t)
	if _, err := d.e.Prepare(ctx, p); err != nil {
		t.Fatal(err)
	}
	src, dst := tcpPair(t)
	tunnel := make(chan error, 1)
	go func() { tunnel <- d.e.Tunnel(ctx, p.ID, "pages", dst) }()
	if _, err := d.e.Restore(ctx, p.ID, api.MigrationRestorePost{Lazy: true}); err != nil {
		t.Fatal(err)
	}
	daemon := <-d.drv.lazyConn
	defer daemon.Close()
	// Pages flow for three CommitTimeouts: the copy stays.
	go io.Copy(io.Discard, src)
	for i := 0; i < 15; i++ {
		if _, err := daemon.Write([]byte("get page\n")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st, _ := d.e.Status(p.ID); st.Status != api.MigrationRunning {
		t.Fatalf("a lazy copy receiving pages was dropped: %+v", st)
	}
	d.drv.lazyDone <- errors.New("criu lazy-pages: page server hung up")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, _ := d.e.Status(p.ID); st != nil && st.Status == api.MigrationAborted {
			if !strings.Contains(st.Error, "memory transfer failed") {
				t.Errorf("status %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a copy whose memory transfer failed was not dropped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d.records(t) != 0 || d.drv.Count() != 0 {
		t.Fatalf("left: %d records, %d fake instances", d.records(t), d.drv.Count())
	}
	select { // the relay is closed: the parked tunnel's handler returns
	case <-tunnel:
	case <-time.After(5 * time.Second):
		t.Fatal("the pages tunnel outlived the migration")
	}
}

func TestTunnelPagesOnlyForLiveContainers(t *testing.T) {
	d := newDest(t)
	p := validPost(t)
	p.Live = false
	if _, err := d.e.Prepare(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	_, dst := tcpPair(t)
	if err := d.e.Tunnel(context.Background(), p.ID, "pages", dst); err == nil {
		t.Fatal("a cold move took a pages tunnel")
	}
}
