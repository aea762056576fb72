package storage

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/testenv"
)

func TestAttachRules(t *testing.T) {
	testenv.Require(t, "qemu-img")
	m, ctx := defaultPool(t)
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "d", ContentType: ContentBlock, Size: 8 << 20}))
	attach := func(inst string, ro bool) error { return m.Attach(ctx, "default", "d", inst, ro) }
	usedBy := func() []Attachment { return must[*Volume](t)(m.GetVolume(ctx, "default", "d")).UsedBy }

	if err := attach("c1", false); err != nil {
		t.Fatal(err)
	}
	if err := attach("c1", false); err != nil { // again: a no-op
		t.Fatal(err)
	}
	wantKind(t, attach("c2", false), errdefs.ErrConflict, "attached to c1 on host-a", "read-only")
	wantKind(t, attach("c2", true), errdefs.ErrConflict, "c1") // the writer is still there
	if u := usedBy(); len(u) != 1 || u[0] != (Attachment{Instance: "c1", Host: "host-a"}) {
		t.Fatalf("used_by %+v", u)
	}
	if err := attach("c1", true); err != nil { // alone, it may switch to read-only
		t.Fatal(err)
	}
	if err := attach("c2", true); err != nil {
		t.Fatal(err)
	}
	wantKind(t, attach("c3", false), errdefs.ErrConflict, "c1 on host-a (read-only), c2 on host-a (read-only)")
	wantKind(t, attach("c1", false), errdefs.ErrConflict, "c2") // cannot become a writer beside a reader
	if u := usedBy(); len(u) != 2 || !u[0].ReadOnly || !u[1].ReadOnly {
		t.Fatalf("used_by %+v", u)
	}
	wantKind(t, m.Detach(ctx, "default", "d", "c9"), errdefs.ErrNotFound, "not attached to c9")
	for _, c := range []string{"c1", "c2"} {
		if err := m.Detach(ctx, "default", "d", c); err != nil {
			t.Fatal(err)
		}
	}
	if err := attach("c3", false); err != nil {
		t.Fatal(err)
	}
	wantKind(t, attach("Bad Name", true), errdefs.ErrInvalidArgument)
	wantKind(t, m.Attach(ctx, "default", "nope", "c1", false), errdefs.ErrNotFound)
}

// A disk QEMU has open (it holds OFD locks on bytes 100+ of the image) cannot be deleted or
// restored, even when the bookkeeping says nobody uses it.
func TestQEMULockedDiskRefused(t *testing.T) {
	testenv.Require(t, "qemu-img")
	m, ctx := defaultPool(t)
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "d", ContentType: ContentBlock, Size: 8 << 20}))
	must0(t, m.SnapshotVolume(ctx, "default", "d", "s"))
	f, err := os.OpenFile(must[string](t)(m.VolumePath("default", "d")), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 101, Len: 1}
	must0(t, unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk))
	wantKind(t, m.DeleteVolume(ctx, "default", "d"), errdefs.ErrConflict, "open in a running QEMU")
	wantKind(t, m.RestoreVolume(ctx, "default", "d", "s"), errdefs.ErrConflict, "QEMU")
	f.Close()
	must0(t, m.RestoreVolume(ctx, "default", "d", "s"))
	must0(t, m.DeleteVolume(ctx, "default", "d"))
}

// LocalAttachments lists this host's attachments, for recovery to reconcile and orphans to report.
func TestLocalAttachments(t *testing.T) {
	testenv.Require(t, "qemu-img")
	m, ctx := defaultPool(t)
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "a", ContentType: ContentBlock, Size: 8 << 20}))
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "b", ContentType: ContentBlock, Size: 8 << 20}))
	must0(t, m.Attach(ctx, "default", "a", "c1", false))
	must0(t, m.Attach(ctx, "default", "b", "c1", true))
	must0(t, m.Attach(ctx, "default", "b", "c2", true))
	got := must[[]VolumeAttachment](t)(m.LocalAttachments(ctx))
	want := []VolumeAttachment{
		{Pool: "default", Volume: "custom/a", Attachment: Attachment{Instance: "c1", Host: "host-a"}},
		{Pool: "default", Volume: "custom/b", Attachment: Attachment{Instance: "c1", ReadOnly: true, Host: "host-a"}},
		{Pool: "default", Volume: "custom/b", Attachment: Attachment{Instance: "c2", ReadOnly: true, Host: "host-a"}},
	}
	if len(got) != len(want) {
		t.Fatalf("attachments %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("attachment %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
