package storage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tandem/internal/errdefs"
	"tandem/internal/progress"
	"tandem/internal/testenv"
)

func TestDirPoolLifecycle(t *testing.T) {
	m, ctx := defaultPool(t)
	p := must[*Pool](t)(m.EnsureDefault(ctx)) // idempotent
	if p.Driver != DriverDir || p.Status != "ok" || p.Free == 0 || p.Total < p.Free || p.Path != filepath.Join(m.dir, "pools", "default") {
		t.Fatalf("default pool %+v", p)
	}
	src := filepath.Join(t.TempDir(), "p2")
	p2 := must[*Pool](t)(m.CreatePool(ctx, PoolConfig{Name: "p2", Driver: DriverDir, Source: src}))
	if p2.Path != src || !exists(identityPath(src)) {
		t.Fatalf("p2 %+v", p2)
	}
	must[*Volume](t)(m.CreateVolume(ctx, "p2", VolumeConfig{Name: "root", Type: TypeContainer}))
	err := m.DeletePool(ctx, "p2")
	wantKind(t, err, errdefs.ErrConflict, "still has 1 volumes", "container/root")

	// A restarted manager sees the same pools and volumes.
	m2 := newManager(t, m.dir, "host-a")
	if pools := must[[]Pool](t)(m2.ListPools(ctx)); len(pools) != 2 || pools[0].Name != "default" || pools[1].Name != "p2" {
		t.Fatalf("pools after restart: %+v", pools)
	}
	if err := m2.DeleteVolume(ctx, "p2", "container/root"); err != nil {
		t.Fatal(err)
	}
	if err := m2.DeletePool(ctx, "p2"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(src); len(ents) != 0 {
		t.Fatalf("deleted pool left %v in its source", ents)
	}
	_, err = m2.GetPool(ctx, "p2")
	wantKind(t, err, errdefs.ErrNotFound)
	if err := m2.DeletePool(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if exists(p.Path) {
		t.Fatal("the default pool's directory survived its delete")
	}
}

// Container-type volumes on a dir pool are plain directories: snapshot, change, restore.
func TestDirVolumeSnapshotRestore(t *testing.T) {
	m, ctx := defaultPool(t)
	v := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "c1", Type: TypeContainer}))
	if v.Format != FormatDir || v.State != StateReady || v.Pending != nil {
		t.Fatalf("volume %+v", v)
	}
	dir, unmount, err := m.MountVolume(ctx, "default", "container/c1")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir+"/etc/hostname", "old\n")
	if err := m.SnapshotVolume(ctx, "default", "container/c1", "s1"); err != nil {
		t.Fatal(err)
	}
	wantKind(t, m.SnapshotVolume(ctx, "default", "container/c1", "s1"), errdefs.ErrAlreadyExists)
	writeFile(t, dir+"/etc/hostname", "new\n")
	writeFile(t, dir+"/added", "x")
	wantKind(t, m.RestoreVolume(ctx, "default", "container/c1", "s1"), errdefs.ErrConflict, "in use", "mounted")
	unmount()
	if err := m.RestoreVolume(ctx, "default", "container/c1", "s1"); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, dir+"/etc/hostname"); got != "old\n" || exists(dir+"/added") {
		t.Fatalf("after restore: hostname %q, added file there: %v", got, exists(dir+"/added"))
	}
	wantKind(t, m.RestoreVolume(ctx, "default", "container/c1", "nope"), errdefs.ErrNotFound)
	v = must[*Volume](t)(m.GetVolume(ctx, "default", "container/c1"))
	if len(v.Snapshots) != 1 || v.Snapshots[0].Name != "s1" || v.Pending != nil {
		t.Fatalf("record %+v", v)
	}
	if err := m.DeleteSnapshot(ctx, "default", "container/c1", "s1"); err != nil {
		t.Fatal(err)
	}
	if exists(snapPath(m.pools["default"].Path, TypeContainer, "c1", "s1")) {
		t.Fatal("snapshot data survived")
	}
	wantKind(t, m.DeleteSnapshot(ctx, "default", "container/c1", "s1"), errdefs.ErrNotFound)
	if tmp, _ := os.ReadDir(filepath.Join(m.pools["default"].Path, "tmp")); len(tmp) != 0 {
		t.Fatalf("scratch left: %v", tmp)
	}
}

func TestBlockVolume(t *testing.T) {
	testenv.Require(t, "qemu-img")
	m, ctx := defaultPool(t)
	v := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "disk1", ContentType: ContentBlock, Size: 64 << 20}))
	path := must[string](t)(m.VolumePath("default", "disk1"))
	if v.Format != FormatQcow2 || !strings.HasSuffix(path, "/volumes/custom/disk1/disk.qcow2") || qemuVirtualSize(t, path) != 64<<20 {
		t.Fatalf("volume %+v at %s", v, path)
	}
	_, _, err := m.MountVolume(ctx, "default", "disk1")
	wantKind(t, err, errdefs.ErrInvalidArgument, "block volume")
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "vm-disk", Type: TypeVM, Size: 8 << 20}))
	_, err = m.CreateVolume(ctx, "default", VolumeConfig{Name: "disk1", ContentType: ContentBlock, Size: 8 << 20})
	wantKind(t, err, errdefs.ErrAlreadyExists, "custom/disk1")

	if err := m.SnapshotVolume(ctx, "default", "disk1", "before"); err != nil {
		t.Fatal(err)
	}
	if err := m.ResizeVolume(ctx, "default", "disk1", 128<<20); err != nil {
		t.Fatal(err)
	}
	if got := qemuVirtualSize(t, path); got != 128<<20 || must[*Volume](t)(m.GetVolume(ctx, "default", "disk1")).Size != 128<<20 {
		t.Fatalf("after grow: %d", got)
	}
	wantKind(t, m.ResizeVolume(ctx, "default", "disk1", 32<<20), errdefs.ErrInvalidArgument, "shrinking")
	wantKind(t, m.ResizeVolume(ctx, "default", "disk1", 0), errdefs.ErrInvalidArgument, "0 is impossible")
	if err := m.RestoreVolume(ctx, "default", "disk1", "before"); err != nil {
		t.Fatal(err)
	}
	if got := qemuVirtualSize(t, path); got != 64<<20 || must[*Volume](t)(m.GetVolume(ctx, "default", "disk1")).Size != 64<<20 {
		t.Fatalf("after restore: %d", got)
	}

	// Copy to another pool, with progress.
	must[*Pool](t)(m.CreatePool(ctx, PoolConfig{Name: "other", Driver: DriverDir}))
	var pcts []int
	pctx := progress.With(ctx, func(p int, _ string) { pcts = append(pcts, p) })
	c := must[*Volume](t)(m.CopyVolume(pctx, "default", "disk1", "other", "disk2"))
	if c.Size != 64<<20 || c.Format != FormatQcow2 || len(c.Snapshots) != 0 || len(pcts) == 0 || pcts[len(pcts)-1] != 100 {
		t.Fatalf("copy %+v, progress %v", c, pcts)
	}
	if got := qemuVirtualSize(t, must[string](t)(m.VolumePath("other", "disk2"))); got != 64<<20 {
		t.Fatalf("copy's size %d", got)
	}
	for _, ref := range []string{"disk1", "vm/vm-disk"} {
		if err := m.DeleteVolume(ctx, "default", ref); err != nil {
			t.Fatal(err)
		}
	}
	if ents, _ := filepath.Glob(filepath.Join(m.pools["default"].Path, "*", "*", "*")); len(ents) != 0 {
		t.Fatalf("deleted volumes left %v", ents)
	}
}

// Custom filesystem volumes are ext4 images: grow and shrink offline need no root.
func TestExt4Volume(t *testing.T) {
	testenv.Require(t, "e2fsprogs")
	m, ctx := defaultPool(t)
	v := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "data", Size: 32 << 20}))
	img := must[string](t)(m.VolumePath("default", "data"))
	if v.Format != FormatExt4 || v.ContentType != ContentFilesystem || ext4Size(t, img) != 32<<20 {
		t.Fatalf("volume %+v, fs %d", v, ext4Size(t, img))
	}
	if v.Usage == 0 || v.Usage >= 32<<20 {
		t.Fatalf("usage %d: the image should be sparse", v.Usage)
	}
	if err := m.ResizeVolume(ctx, "default", "data", 48<<20); err != nil {
		t.Fatal(err)
	}
	if got := ext4Size(t, img); got != 48<<20 {
		t.Fatalf("after grow: fs %d", got)
	}
	if err := m.ResizeVolume(ctx, "default", "data", 16<<20); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(img); ext4Size(t, img) != 16<<20 || fi.Size() != 16<<20 {
		t.Fatalf("after shrink: fs %d", ext4Size(t, img))
	}
	// A copy is sparse too.
	c := must[*Volume](t)(m.CopyVolume(ctx, "default", "data", "default", "data2"))
	if c.Usage == 0 || c.Usage > v.Usage*2 || c.Size != 16<<20 {
		t.Fatalf("copy %+v (source used %d)", c, v.Usage)
	}
}

func TestDeleteRefusedWhileAttached(t *testing.T) {
	testenv.Require(t, "qemu-img")
	m, ctx := defaultPool(t)
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "d", ContentType: ContentBlock, Size: 8 << 20}))
	if err := m.Attach(ctx, "default", "d", "v1", false); err != nil {
		t.Fatal(err)
	}
	wantKind(t, m.DeleteVolume(ctx, "default", "d"), errdefs.ErrConflict, "attached to v1 on host-a", "detach it first")
	if err := m.Detach(ctx, "default", "d", "v1"); err != nil {
		t.Fatal(err)
	}
	release := must[func() error](t)(m.Acquire(ctx, "default", "d", "v1"))
	wantKind(t, m.DeleteVolume(ctx, "default", "d"), errdefs.ErrConflict, "leased by v1 on host host-a")
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteVolume(ctx, "default", "d"); err != nil {
		t.Fatal(err)
	}
	wantKind(t, m.DeleteVolume(ctx, "default", "d"), errdefs.ErrNotFound)
}
