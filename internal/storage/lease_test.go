package storage

import (
	"os"
	"strings"
	"testing"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/testenv"
)

// twoHosts opens two managers (two daemons: two dirs, two host ids) on one shared directory.
func twoHosts(t *testing.T) (a, b *Manager, shared string) {
	testenv.Require(t, "e2fsprogs")
	shared = t.TempDir()
	a, b = newManager(t, "", "host-a"), newManager(t, "", "host-b")
	ctx := testenv.Context(t, 2*time.Minute)
	must[*Pool](t)(a.CreatePool(ctx, PoolConfig{Name: "sh", Driver: DriverShared, Source: shared}))
	must[*Pool](t)(b.CreatePool(ctx, PoolConfig{Name: "shared1", Driver: DriverShared, Source: shared})) // joins
	return a, b, shared
}

func TestSharedPoolLease(t *testing.T) {
	a, b, shared := twoHosts(t)
	ctx := testenv.Context(t, 2*time.Minute)
	v := must[*Volume](t)(a.CreateVolume(ctx, "sh", VolumeConfig{Name: "disk", Size: 16 << 20}))
	if v.Format != FormatExt4 {
		t.Fatalf("shared volume %+v", v)
	}
	// Host b sees the volume host a made.
	if vols := must[[]Volume](t)(b.ListVolumes(ctx, "shared1")); len(vols) != 1 || vols[0].Name != "disk" || vols[0].Pool != "shared1" {
		t.Fatalf("host b sees %+v", vols)
	}
	relA := must[func() error](t)(a.Acquire(ctx, "sh", "disk", "c1"))
	_, err := b.Acquire(ctx, "shared1", "disk", "c2")
	wantKind(t, err, errdefs.ErrConflict, "in use by c1 on host host-a")
	wantKind(t, b.DeleteVolume(ctx, "shared1", "disk"), errdefs.ErrConflict, "leased by c1 on host host-a")
	wantKind(t, b.ResizeVolume(ctx, "shared1", "disk", 32<<20), errdefs.ErrConflict, "in use on host host-a")
	// Same host: the same holder nests, another holder is refused.
	relA2 := must[func() error](t)(a.Acquire(ctx, "sh", "disk", "c1"))
	_, err = a.Acquire(ctx, "sh", "disk", "c3")
	wantKind(t, err, errdefs.ErrConflict, "in use by c1 on this host")
	// The heartbeat keeps the lease alive past its TTL (3s in tests).
	time.Sleep(4 * time.Second)
	_, err = b.Acquire(ctx, "shared1", "disk", "c2")
	wantKind(t, err, errdefs.ErrConflict, "host-a")
	relA2()
	_, err = b.Acquire(ctx, "shared1", "disk", "c2")
	wantKind(t, err, errdefs.ErrConflict, "host-a") // still held once
	if err := relA(); err != nil {
		t.Fatal(err)
	}
	relB := must[func() error](t)(b.Acquire(ctx, "shared1", "disk", "c2"))
	_, err = a.Acquire(ctx, "sh", "disk", "c1")
	wantKind(t, err, errdefs.ErrConflict, "in use by c2 on host host-b")
	relB()

	// Where file locks are not honoured the lease alone must hold: a lease of another host with
	// nobody holding the lock refuses until it expires.
	lease := lockBase(shared, TypeCustom, "disk") + ".lease"
	rec := leaseRecord{Host: "host-c", Holder: "v9", Token: "x", Acquired: time.Now(), Expires: time.Now().Add(time.Hour)}
	if err := writeJSON(lease, &rec); err != nil {
		t.Fatal(err)
	}
	_, err = a.Acquire(ctx, "sh", "disk", "c1")
	wantKind(t, err, errdefs.ErrConflict, "in use by v9 on host host-c")
	rec.Expires = time.Now().Add(-time.Second)
	writeJSON(lease, &rec)
	rel := must[func() error](t)(a.Acquire(ctx, "sh", "disk", "c1")) // an expired lease is taken over
	if got := readLease(lease); got == nil || got.Host != "host-a" || got.Holder != "c1" {
		t.Fatalf("lease after take-over %+v", got)
	}
	rel()
	if exists(lease) {
		t.Fatal("release left the lease file")
	}
}

func TestSharedPoolRecordsAndAttach(t *testing.T) {
	a, b, shared := twoHosts(t)
	ctx := testenv.Context(t, 2*time.Minute)
	must[*Volume](t)(a.CreateVolume(ctx, "sh", VolumeConfig{Name: "data", Size: 16 << 20}))
	if err := a.Attach(ctx, "sh", "data", "c1", false); err != nil {
		t.Fatal(err)
	}
	wantKind(t, b.Attach(ctx, "shared1", "data", "v1", true), errdefs.ErrConflict, "c1 on host-a")
	// Host b cannot leave the pool... it can: nothing is attached on b. Host a cannot delete it.
	wantKind(t, a.DeleteVolume(ctx, "sh", "data"), errdefs.ErrConflict, "attached to c1 on host-a")
	if err := b.DeletePool(ctx, "shared1"); err != nil {
		t.Fatal(err)
	}
	if !exists(identityPath(shared)) || !exists(recordPath(shared, TypeCustom, "data")) {
		t.Fatal("a host leaving a shared pool removed its data")
	}
	var id identity
	readJSON(identityPath(shared), &id)
	if strings.Join(id.Hosts, ",") != "host-a" {
		t.Fatalf("hosts after b left: %v", id.Hosts)
	}
	a.Detach(ctx, "sh", "data", "c1")
	wantKind(t, a.DeletePool(ctx, "sh"), errdefs.ErrConflict, "custom/data")
	if err := a.DeleteVolume(ctx, "sh", "data"); err != nil {
		t.Fatal(err)
	}
	if err := a.DeletePool(ctx, "sh"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(shared); len(ents) != 0 {
		t.Fatalf("the last host leaving left %v", ents)
	}
}
