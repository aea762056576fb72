package server

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/api"
	"tandem/client"
	"tandem/internal/events"
	"tandem/internal/hostexec"
	"tandem/internal/operations"
	"tandem/internal/storage"
	"tandem/internal/store"
	"tandem/internal/testenv"
)

// storageAPI is a server with a real storage.Manager under t.TempDir(), reachable both by raw HTTP
// (testAPI.do) and through the Go client on a unix socket.
type storageAPI struct {
	*testAPI
	m   *storage.Manager
	c   *client.Client
	hub *events.Hub
	ctx context.Context
}

// newStorageAPI makes the server; with, if given, adds to it (an instance manager).
func newStorageAPI(t *testing.T, with ...func(s *Server, st *store.Store)) *storageAPI {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	hub := events.NewHub()
	ops := operations.NewManager(st, hub)
	m, err := storage.NewManager(storage.Options{Dir: filepath.Join(dir, "storage"), HostID: "host-a", LeaseTTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Operations: ops, Events: hub, Storage: m, Dir: dir}
	for _, f := range with {
		f(s, st)
	}
	srv := httptest.NewServer(s.Handler())
	// The client speaks over a unix socket, like the CLI (not under t.TempDir: its path can be too long).
	sockDir, err := os.MkdirTemp("", "tsto")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(sockDir, client.SocketName))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s.Handler()}
	go hs.Serve(l)
	c, err := client.New(sockDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(func() {
		cancel()
		hs.Close()
		srv.Close()
		os.RemoveAll(sockDir)
		ops.Shutdown(10 * time.Second)
		m.Close()
		st.Close()
	})
	return &storageAPI{testAPI: &testAPI{t: t, srv: srv}, m: m, c: c, hub: hub, ctx: ctx}
}

// waitOK waits for an operation through the client and fails the test unless it succeeded.
func (a *storageAPI) waitOK(op *api.Operation, err error) *api.Operation {
	a.t.Helper()
	if err != nil {
		a.t.Fatal(err)
	}
	final, err := a.c.WaitOperation(a.ctx, op.ID, nil)
	if err != nil {
		a.t.Fatalf("operation %q: %v", op.Description, err)
	}
	return final
}

// opCode sends a request that should answer 202 and returns the finished operation.
func (a *storageAPI) opCode(method, path, body string) *api.Operation {
	a.t.Helper()
	code, data := a.do(method, path, body)
	if code != http.StatusAccepted {
		a.t.Fatalf("%s %s: %d %s", method, path, code, data)
	}
	return a.wait(data)
}

func (a *storageAPI) volume(pool, ref string) *api.StorageVolume {
	a.t.Helper()
	v, err := a.c.GetStorageVolume(a.ctx, pool, ref)
	if err != nil {
		a.t.Fatalf("get volume %s/%s: %v", pool, ref, err)
	}
	return v
}

func (a *storageAPI) createPool(name string) {
	a.t.Helper()
	if _, err := a.c.CreateStoragePool(a.ctx, api.StoragePoolsPost{Name: name, Driver: "dir"}); err != nil {
		a.t.Fatal(err)
	}
}

func wantStorageStatus(t *testing.T, err error, code int, contains string) {
	t.Helper()
	var se *client.StatusError
	if !errors.As(err, &se) || se.Code != code || !strings.Contains(se.Message, contains) {
		t.Fatalf("error %v: want %d containing %q", err, code, contains)
	}
}

func TestStorageDisabled(t *testing.T) {
	a := newTestAPI(t)
	a.wantError("GET", "/1.0/storage-pools", "", 503, "storage is not set up")
	a.wantError("POST", "/1.0/storage-pools/default/volumes", `{"name":"v","size":"1GiB"}`, 503, "storage is not set up")
}

func TestStoragePools(t *testing.T) {
	a := newStorageAPI(t)
	src := filepath.Join(t.TempDir(), "p1")
	code, data := a.do("POST", "/1.0/storage-pools", `{"name":"p1","driver":"dir","source":"`+src+`"}`)
	if code != http.StatusCreated {
		t.Fatalf("create pool: %d %s", code, data)
	}
	var p api.StoragePool
	json.Unmarshal(data, &p)
	if p.Name != "p1" || p.Driver != "dir" || p.Path != src || p.Status != "ok" || p.Free == 0 || p.Total < p.Free || p.Volumes != 0 {
		t.Fatalf("pool %s", data)
	}
	a.createPool("p2")
	pools, err := a.c.GetStoragePools(a.ctx)
	if err != nil || len(pools) != 2 || pools[0].Name != "p1" || pools[1].Name != "p2" {
		t.Fatalf("pools %+v %v", pools, err)
	}
	got, err := a.c.GetStoragePool(a.ctx, "p2")
	if err != nil || got.Driver != "dir" || got.Source != "" || !strings.HasSuffix(got.Path, "/pools/p2") {
		t.Fatalf("p2 %+v %v", got, err)
	}

	a.wantError("POST", "/1.0/storage-pools", `{"name":"p1","driver":"dir"}`, 409, "already exists")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"dir","source":"`+src+`"}`, 409, "already uses")
	for _, name := range []string{"", "Upper", "-dash", "a/b", "a_b", strings.Repeat("a", 64)} {
		body, _ := json.Marshal(api.StoragePoolsPost{Name: name, Driver: "dir"})
		a.wantError("POST", "/1.0/storage-pools", string(body), 400, "pool name")
	}
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"zfs"}`, 400, "unknown pool driver")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"dir","size":"1GiB"}`, 400, "takes no size")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"btrfs","size":"lots"}`, 400, "pool size")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"btrfs"}`, 400, "needs a source")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"shared"}`, 400, "needs a source")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"dir","source":"rel/path"}`, 400, "absolute path")
	a.wantError("POST", "/1.0/storage-pools", `{"name":"p3","driver":"dir","colour":"red"}`, 400, "unknown field")
	a.wantError("GET", "/1.0/storage-pools/nope", "", 404, "not found")
	a.wantError("GET", "/1.0/storage-pools/Nope", "", 400, "pool name")
	a.wantError("DELETE", "/1.0/storage-pools/nope", "", 404, "not found")
	a.wantError("GET", "/1.0/storage-pools/nope/volumes", "", 404, "not found")

	// A pool with a volume cannot go.
	if _, err := a.m.CreateVolume(a.ctx, "p1", storage.VolumeConfig{Name: "c1", Type: storage.TypeContainer}); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.c.GetStoragePool(a.ctx, "p1"); got.Volumes != 1 {
		t.Fatalf("p1 counts %d volumes", got.Volumes)
	}
	wantStorageStatus(t, a.c.DeleteStoragePool(a.ctx, "p1"), 409, "container/c1")
	if err := a.c.DeleteStorageVolume(a.ctx, "p1", "container/c1"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"p1", "p2"} {
		if err := a.c.DeleteStoragePool(a.ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	wantStorageStatus(t, a.c.DeleteStoragePool(a.ctx, "p1"), 404, "not found")
	if pools, err := a.c.GetStoragePools(a.ctx); err != nil || len(pools) != 0 {
		t.Fatalf("pools after delete: %+v %v", pools, err)
	}
	if _, data := a.do("GET", "/1.0/storage-pools", ""); strings.TrimSpace(string(data)) != "[]" {
		t.Fatalf("empty list is %s", data)
	}
}

func TestStorageBtrfsLoopPool(t *testing.T) {
	testenv.Require(t, "root", "btrfs-progs", "losetup")
	a := newStorageAPI(t)
	start := time.Now()
	p, err := a.c.CreateStoragePool(a.ctx, api.StoragePoolsPost{Name: "bt", Driver: "btrfs", Size: "256MiB"})
	if err != nil {
		if strings.Contains(err.Error(), "loop") {
			testenv.Unsupported(t, "no loop devices here: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { a.m.DeletePool(context.Background(), "bt") })
	if p.Driver != "btrfs" || p.Size != 256<<20 || p.Status != "ok" || p.Total == 0 {
		t.Fatalf("btrfs pool %+v", p)
	}
	t.Logf("btrfs loop pool created in %v", time.Since(start))
	a.wantError("POST", "/1.0/storage-pools", `{"name":"bt2","driver":"btrfs","size":"1MiB"}`, 400, "at least")
	if err := a.c.DeleteStoragePool(a.ctx, "bt"); err != nil {
		t.Fatal(err)
	}
}

// The request checks of volume calls answer at once, before any operation starts.
func TestStorageVolumeErrors(t *testing.T) {
	a := newStorageAPI(t)
	a.createPool("default")
	base := "/1.0/storage-pools/default/volumes"
	for _, name := range []string{"", "Upper", "-dash", ".hidden", "a/b", "a@b", "sp ace", strings.Repeat("a", 81)} {
		body, _ := json.Marshal(api.StorageVolumesPost{Name: name, Size: "8MiB"})
		a.wantError("POST", base, string(body), 400, "volume name")
	}
	a.wantError("POST", base, `{"name":"v","size":"0"}`, 400, "0 is impossible")
	a.wantError("POST", base, `{"name":"v","size":"1KiB"}`, 400, "too small")
	a.wantError("POST", base, `{"name":"v","size":"2EiB"}`, 400, "larger than 1EiB")
	a.wantError("POST", base, `{"name":"v","size":"lots"}`, 400, "invalid size")
	a.wantError("POST", base, `{"name":"v","size":"900PiB"}`, 400, "does not fit")
	a.wantError("POST", base, `{"name":"v"}`, 400, "needs a size")
	a.wantError("POST", base, `{"name":"v","size":"8MiB","content_type":"tape"}`, 400, "unknown content type")
	a.wantError("POST", base, `{"name":"v","size":"8MiB","type":"vm"}`, 400, "unknown field")
	a.wantError("POST", base, `{"name":"v","size":8388608}`, 400, "malformed")
	a.wantError("POST", "/1.0/storage-pools/nope/volumes", `{"name":"v","size":"8MiB"}`, 404, "not found")
	a.wantError("POST", "/1.0/storage-pools/No/volumes", `{"name":"v","size":"8MiB"}`, 400, "pool name")
	a.wantError("GET", base+"/nope", "", 404, "not found")
	a.wantError("GET", base+"/Nope", "", 400, "volume name")
	a.wantError("GET", base+"/pod/x", "", 400, "unknown volume type")
	a.wantError("GET", base+"/pod%2Fx", "", 400, "unknown volume type")
	a.wantError("GET", "/1.0/storage-pools/nope/volumes/v", "", 404, "not found")
	a.wantError("PATCH", base+"/nope", `{"size":"1GiB"}`, 404, "not found")
	a.wantError("PATCH", base+"/nope", `{}`, 400, "give a size")
	a.wantError("DELETE", base+"/nope", "", 404, "not found")
	a.wantError("POST", base+"/nope/snapshots", `{"name":"s"}`, 404, "not found")
	a.wantError("GET", base+"/nope/snapshots", "", 404, "not found")
	a.wantError("POST", base+"/nope/restore", `{"snapshot":"s"}`, 404, "not found")
	a.wantError("POST", base+"/nope/copy", `{"target_pool":"default","target_name":"x"}`, 404, "not found")
	a.wantError("DELETE", base+"/nope/snapshots/s", "", 404, "not found")
	// Nothing was made, and no operation started.
	if vols, err := a.c.GetStorageVolumes(a.ctx, "default"); err != nil || len(vols) != 0 {
		t.Fatalf("volumes after bad requests: %+v %v", vols, err)
	}
	if ops, _ := a.c.GetOperations(a.ctx); len(ops) != 0 {
		t.Fatalf("bad requests started %d operations", len(ops))
	}
}

// Block volumes are qcow2 files: create, resize, snapshot, restore, copy with progress, delete.
func TestStorageBlockVolume(t *testing.T) {
	testenv.Require(t, "qemu-img")
	a := newStorageAPI(t)
	a.createPool("default")
	a.createPool("other")
	base := "/1.0/storage-pools/default/volumes"

	op := a.waitOK(a.c.CreateStorageVolume(a.ctx, "default", api.StorageVolumesPost{Name: "disk1", ContentType: "block", Size: "64MiB"}))
	if op.Metadata["volume"] != "custom/disk1" || op.Metadata["pool"] != "default" {
		t.Fatalf("create metadata %v", op.Metadata)
	}
	v := a.volume("default", "disk1")
	if v.Type != "custom" || v.Pool != "default" || v.ContentType != "block" || v.Format != "qcow2" || v.Size != 64<<20 ||
		v.State != "ready" || v.Pending != "" || len(v.UsedBy) != 0 || v.UsedBy == nil || v.Snapshots == nil {
		t.Fatalf("volume %+v", v)
	}
	// The same volume by its other names: TYPE/NAME as one escaped segment or as two segments.
	for _, p := range []string{base + "/disk1", base + "/custom%2Fdisk1", base + "/custom/disk1"} {
		if code, data := a.do("GET", p, ""); code != 200 || !strings.Contains(string(data), `"name":"disk1"`) {
			t.Fatalf("GET %s: %d %s", p, code, data)
		}
	}
	a.wantError("POST", base, `{"name":"disk1","content_type":"block","size":"8MiB"}`, 409, "already exists")

	// Resize: grow, refuse a shrink and impossible sizes.
	a.opCode("PATCH", base+"/disk1", `{"size":"128MiB"}`)
	if v := a.volume("default", "disk1"); v.Size != 128<<20 {
		t.Fatalf("after grow: %d", v.Size)
	}
	a.wantError("PATCH", base+"/disk1", `{"size":"32MiB"}`, 400, "shrinking")
	a.wantError("PATCH", base+"/disk1", `{"size":"0"}`, 400, "0 is impossible")
	a.wantError("PATCH", base+"/disk1", `{"size":"900PiB"}`, 400, "does not fit")
	a.wantError("PATCH", base+"/disk1", `{"size":"2EiB"}`, 400, "larger than 1EiB")

	// Snapshot at 128MiB, grow, restore: the size is back.
	a.waitOK(a.c.CreateStorageVolumeSnapshot(a.ctx, "default", "disk1", "before"))
	a.wantError("POST", base+"/disk1/snapshots", `{"name":"before"}`, 409, "already has a snapshot")
	a.wantError("POST", base+"/disk1/snapshots", `{"name":"Bad/Name"}`, 400, "snapshot name")
	a.opCode("PATCH", base+"/custom/disk1", `{"size":"192MiB"}`)
	a.wantError("POST", base+"/disk1/restore", `{"snapshot":"nope"}`, 404, "no snapshot")
	a.wantError("POST", base+"/disk1/restore", `{}`, 400, "needs a snapshot")
	a.waitOK(a.c.RestoreStorageVolume(a.ctx, "default", "disk1", "before"))
	v = a.volume("default", "disk1")
	if v.Size != 128<<20 || len(v.Snapshots) != 1 || v.Snapshots[0] != "before" {
		t.Fatalf("after restore %+v", v)
	}
	snaps, err := a.c.GetStorageVolumeSnapshots(a.ctx, "default", "disk1")
	if err != nil || len(snaps) != 1 || snaps[0].Name != "before" || snaps[0].Size != 128<<20 || snaps[0].CreatedAt.IsZero() {
		t.Fatalf("snapshots %+v %v", snaps, err)
	}

	// Copy to another pool: an operation whose progress comes from storage through the ctx.
	l := a.hub.Subscribe(api.EventOperation)
	defer l.Close()
	var mu sync.Mutex
	var messages []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range l.C {
			var o api.Operation
			json.Unmarshal(ev.Metadata, &o)
			mu.Lock()
			if o.Progress.Message != "" {
				messages = append(messages, o.Progress.Message)
			}
			mu.Unlock()
			if o.Done() && strings.HasPrefix(o.Description, "Copying") {
				return
			}
		}
	}()
	op = a.waitOK(a.c.CopyStorageVolume(a.ctx, "default", "disk1", "other", ""))
	if op.Metadata["volume"] != "custom/disk1" || op.Metadata["pool"] != "other" || op.Progress.Percent != 100 ||
		!slices.Contains(op.Resources, "/1.0/storage-pools/other/volumes/custom/disk1") {
		t.Fatalf("copy op %+v", op)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("no end of the copy on the event stream")
	}
	mu.Lock()
	if !slices.ContainsFunc(messages, func(m string) bool { return strings.Contains(m, "copy custom/disk1") }) {
		t.Fatalf("no copy progress reported; messages %v", messages)
	}
	mu.Unlock()
	c := a.volume("other", "disk1")
	if c.Size != 128<<20 || c.Format != "qcow2" || len(c.Snapshots) != 0 {
		t.Fatalf("copy %+v", c)
	}
	a.waitOK(a.c.CopyStorageVolume(a.ctx, "other", "disk1", "default", "disk2"))
	a.volume("default", "disk2")
	a.wantError("POST", base+"/disk1/copy", `{"target_pool":"other"}`, 409, "already exists")
	a.wantError("POST", base+"/disk1/copy", `{"target_pool":"default","target_name":"disk2"}`, 409, "already exists")
	a.wantError("POST", base+"/disk1/copy", `{"target_pool":"nope"}`, 404, "not found")
	a.wantError("POST", base+"/disk1/copy", `{}`, 400, "target_pool")
	a.wantError("POST", base+"/disk1/copy", `{"target_pool":"other","target_name":"Bad"}`, 400, "volume name")
	a.wantError("POST", base+"/disk1/copy", `{"target_pool":"other","target_name":"image/x"}`, 400, "image volumes")

	// Delete is refused while attached, naming the user; used_by shows who.
	if err := a.m.Attach(a.ctx, "default", "disk1", "vm1", false); err != nil {
		t.Fatal(err)
	}
	if v := a.volume("default", "disk1"); !slices.Equal(v.UsedBy, []string{"vm1"}) || len(v.Attachments) != 1 ||
		v.Attachments[0].ReadOnly || v.Attachments[0].Host != "host-a" {
		t.Fatalf("attached volume %+v", v)
	}
	a.wantError("DELETE", base+"/disk1", "", 409, "attached to vm1")
	wantStorageStatus(t, a.c.DeleteStoragePool(a.ctx, "default"), 409, "still has")
	if err := a.m.Detach(a.ctx, "default", "disk1", "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := a.m.Attach(a.ctx, "default", "disk2", "vm2", true); err != nil {
		t.Fatal(err)
	}
	if v := a.volume("default", "disk2"); !slices.Equal(v.UsedBy, []string{"vm2"}) || !v.Attachments[0].ReadOnly {
		t.Fatalf("read-only attachment %+v", v)
	}
	a.wantError("DELETE", base+"/disk2", "", 409, "vm2")

	// Snapshots go one by one or with their volume.
	if err := a.c.DeleteStorageVolumeSnapshot(a.ctx, "default", "disk1", "before"); err != nil {
		t.Fatal(err)
	}
	wantStorageStatus(t, a.c.DeleteStorageVolumeSnapshot(a.ctx, "default", "disk1", "before"), 404, "no snapshot")
	if err := a.c.DeleteStorageVolume(a.ctx, "default", "disk1"); err != nil {
		t.Fatal(err)
	}
	a.wantError("GET", base+"/disk1", "", 404, "not found")
	vols, err := a.c.GetStorageVolumes(a.ctx, "default")
	if err != nil || len(vols) != 1 || vols[0].Name != "disk2" {
		t.Fatalf("volumes left %+v %v", vols, err)
	}
}

// Filesystem volumes are ext4 images: mkfs, resize2fs and e2fsck work on files without root.
func TestStorageFilesystemVolume(t *testing.T) {
	testenv.Require(t, "e2fsprogs")
	a := newStorageAPI(t)
	a.createPool("default")
	base := "/1.0/storage-pools/default/volumes"
	op := a.opCode("POST", base, `{"name":"data","size":"33554432"}`)
	if op.Status != api.OpSuccess {
		t.Fatalf("create: %+v", op)
	}
	v := a.volume("default", "data")
	if v.ContentType != "filesystem" || v.Format != "ext4" || v.Size != 32<<20 || v.Usage == 0 || v.Usage >= v.Size {
		t.Fatalf("volume %+v", v)
	}
	a.waitOK(a.c.ResizeStorageVolume(a.ctx, "default", "data", "48MiB"))
	a.waitOK(a.c.CreateStorageVolumeSnapshot(a.ctx, "default", "data", "s1"))
	a.waitOK(a.c.ResizeStorageVolume(a.ctx, "default", "data", "16MiB")) // offline shrink
	if v := a.volume("default", "data"); v.Size != 16<<20 {
		t.Fatalf("after shrink %+v", v)
	}
	a.waitOK(a.c.RestoreStorageVolume(a.ctx, "default", "data", "s1"))
	if v := a.volume("default", "data"); v.Size != 48<<20 {
		t.Fatalf("after restore %+v", v)
	}
	a.waitOK(a.c.CopyStorageVolume(a.ctx, "default", "data", "default", "data2"))
	if c := a.volume("default", "data2"); c.Format != "ext4" || c.Size != 48<<20 {
		t.Fatalf("copy %+v", c)
	}
}

// Instance volumes are reached as TYPE/NAME; a restore of data that is in use fails in its operation.
func TestStorageTypedVolumeRestore(t *testing.T) {
	a := newStorageAPI(t)
	a.createPool("default")
	if _, err := a.m.CreateVolume(a.ctx, "default", storage.VolumeConfig{Name: "c1", Type: storage.TypeContainer}); err != nil {
		t.Fatal(err)
	}
	dir, unmount, err := a.m.MountVolume(a.ctx, "default", "container/c1") // a plain directory: no mount, no root
	if err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, "hostname"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("old")
	base := "/1.0/storage-pools/default/volumes"
	a.opCode("POST", base+"/container/c1/snapshots", `{"name":"s1"}`)
	write("new")
	op := a.opCode("POST", base+"/container%2Fc1/restore", `{"snapshot":"s1"}`)
	if op.Status != api.OpFailure || !strings.Contains(op.Err, "in use") {
		t.Fatalf("restore of a mounted volume: %+v", op)
	}
	if err := unmount(); err != nil {
		t.Fatal(err)
	}
	a.waitOK(a.c.RestoreStorageVolume(a.ctx, "default", "container/c1", "s1"))
	if b, _ := os.ReadFile(filepath.Join(dir, "hostname")); string(b) != "old" {
		t.Fatalf("after restore: %q", b)
	}
	v := a.volume("default", "container/c1")
	if v.Type != "container" || v.Format != "dir" || v.Size != 0 || !slices.Equal(v.Snapshots, []string{"s1"}) {
		t.Fatalf("volume %+v", v)
	}
	a.wantError("PATCH", base+"/container/c1", `{"size":"1GiB"}`, 400, "plain directory")
	// Copy to a custom volume with a type in target_name: a directory tree into an ext4 image.
	if _, err := hostexec.Look("mkfs.ext4"); err == nil {
		a.waitOK(a.c.CopyStorageVolume(a.ctx, "default", "container/c1", "default", "custom/backup"))
		if c := a.volume("default", "backup"); c.Type != "custom" || c.Format != "ext4" {
			t.Fatalf("copy %+v", c)
		}
	}
	code, data := a.do("GET", base+"/container/c1/snapshots", "")
	if code != 200 || !strings.Contains(string(data), `"name":"s1"`) {
		t.Fatalf("snapshots: %d %s", code, data)
	}
	if code, _ := a.do("DELETE", base+"/container/c1/snapshots/s1", ""); code != 200 {
		t.Fatalf("delete snapshot: %d", code)
	}
	if code, _ := a.do("DELETE", base+"/container/c1", ""); code != 200 {
		t.Fatalf("delete: %d", code)
	}
}
