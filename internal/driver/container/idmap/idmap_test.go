package idmap

import (
	"path/filepath"
	"testing"
)

func TestAllocateReleasePersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "idmap.json")
	a, err := Open(path, DefaultFirst, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	r1, _ := a.Allocate("a")
	r2, _ := a.Allocate("b")
	if r1.Base != 1000000 || r2.Base != 1065536 || r1.Size != 65536 {
		t.Fatalf("ranges %+v %+v", r1, r2)
	}
	if again, _ := a.Allocate("a"); again != r1 {
		t.Fatalf("second allocate for the same owner gave %+v", again)
	}
	if err := a.Release("a"); err != nil {
		t.Fatal(err)
	}
	// A new allocator on the same file sees b and reuses a's freed slot.
	b, err := Open(path, DefaultFirst, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok, _ := b.Lookup("b"); !ok || r != r2 {
		t.Fatalf("lookup b after reopen: %+v %v", r, ok)
	}
	if r3, _ := b.Allocate("c"); r3 != r1 {
		t.Fatalf("freed slot not reused: %+v", r3)
	}
	if err := b.Release("nobody"); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, 2000000, DefaultSize); err == nil {
		t.Fatal("reopening with another base succeeded")
	}
}

// A migrated container keeps its exact range; a taken or foreign range is refused.
func TestReserve(t *testing.T) {
	a, err := Open(filepath.Join(t.TempDir(), "idmap.json"), DefaultFirst, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	third := Range{Base: DefaultFirst + 2*DefaultSize, Size: DefaultSize}
	if err := a.Reserve("m", third); err != nil {
		t.Fatal(err)
	}
	if err := a.Reserve("m", third); err != nil {
		t.Fatalf("reserving again: %v", err)
	}
	if r, ok, _ := a.Lookup("m"); !ok || r != third {
		t.Fatalf("lookup %+v %v", r, ok)
	}
	if r, _ := a.Allocate("x"); r.Base != DefaultFirst {
		t.Fatalf("allocate beside a reservation: %+v", r)
	}
	for name, r := range map[string]Range{
		"taken":     third,
		"unaligned": {Base: DefaultFirst + 1, Size: DefaultSize},
		"size":      {Base: DefaultFirst, Size: 1000},
		"below":     {Base: 0, Size: DefaultSize},
	} {
		if err := a.Reserve("other", r); err == nil {
			t.Errorf("%s range %+v reserved", name, r)
		}
	}
}
