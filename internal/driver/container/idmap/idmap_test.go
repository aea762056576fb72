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
