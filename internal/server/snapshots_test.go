package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/driver/fake"
	"tandem/internal/instance"
	"tandem/internal/store"
)

// rootedFake is the fake driver with roots on pools, made from a directory tree.
type rootedFake struct {
	*fake.Driver
	rootfs string
}

func (r rootedFake) RootSource(context.Context, string) (driver.RootSource, error) {
	return driver.RootSource{Fingerprint: "img", Dir: r.rootfs}, nil
}

// Through the API, on a real dir pool: an instance's root is made from the image tree, snapshot,
// changed, restored (the old file is back), and removed with its snapshots.
func TestInstanceSnapshotsAPI(t *testing.T) {
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc", "hostname"), []byte("image\n"), 0o644)
	a := newStorageAPI(t, func(s *Server, st *store.Store) {
		d, _ := fake.New(fake.Options{})
		reg := driver.NewRegistry()
		reg.Register("fake", rootedFake{d, rootfs}, api.TypeContainer, api.TypeVM)
		s.Drivers, s.Instances = reg, instance.NewManager(st, reg, s.Operations, s.Events, nil)
		s.Instances.SetVolumes(s.Storage)
	})
	if _, err := a.m.EnsureDefault(a.ctx); err != nil {
		t.Fatal(err)
	}
	a.waitOK(a.c.CreateInstance(a.ctx, api.InstancesPost{Name: "c1", Type: api.TypeContainer, Image: "img", Start: true}))
	inst, err := a.c.GetInstance(a.ctx, "c1")
	if err != nil || inst.Root == nil || inst.Root.Pool != "default" || inst.Root.Volume != "container/c1" {
		t.Fatalf("instance root %+v %v", inst, err)
	}
	path, err := a.m.VolumePath("default", "container/c1")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(path, "etc", "hostname")
	if b, _ := os.ReadFile(file); string(b) != "image\n" {
		t.Fatalf("root holds %q", b)
	}
	a.waitOK(a.c.CreateInstanceSnapshot(a.ctx, "c1", api.InstanceSnapshotsPost{Name: "s0"}))
	os.WriteFile(file, []byte("changed\n"), 0o644)
	a.wantError("POST", "/1.0/instances/c1/snapshots", `{"name":"s0"}`, 409, "already has")
	a.wantError("POST", "/1.0/instances/c1/snapshots/nope/restore", ``, 404, "no snapshot")
	a.wantError("POST", "/1.0/instances/c1/snapshots", `{"name":"s1","stateful":true}`, 400, "running state")
	a.waitOK(a.c.RestoreInstanceSnapshot(a.ctx, "c1", "s0"))
	if b, _ := os.ReadFile(file); string(b) != "image\n" {
		t.Fatalf("after restore the root holds %q", b)
	}
	if inst, _ := a.c.GetInstance(a.ctx, "c1"); inst.Status != api.StatusRunning {
		t.Fatalf("after restore: %s", inst.Status)
	}
	list, err := a.c.GetInstanceSnapshots(a.ctx, "c1")
	if err != nil || len(list) != 1 || list[0].Name != "s0" || list[0].Stateful {
		t.Fatalf("snapshots %+v %v", list, err)
	}
	a.waitOK(a.c.DeleteInstanceSnapshot(a.ctx, "c1", "s0"))
	a.waitOK(a.c.CreateInstanceSnapshot(a.ctx, "c1", api.InstanceSnapshotsPost{Name: "s1"}))
	a.waitOK(a.c.DeleteInstance(a.ctx, "c1", true))
	if vols, _ := a.m.ListVolumes(a.ctx, "default"); len(vols) != 0 {
		t.Fatalf("deleting the instance left %+v", vols)
	}
}
