// Package idmap hands out disjoint ranges of host uids/gids, one per unprivileged container, and
// remembers them in a JSON file so a range survives daemon restarts and is never given out twice.
package idmap

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// Range is a block of host ids: container id 0 is host id Base.
type Range struct {
	Base uint32 `json:"base"`
	Size uint32 `json:"size"`
}

// Allocator gives range number n the host ids First + n*Size .. + Size-1.
type Allocator struct {
	path  string
	first uint32
	size  uint32
	max   int
	mu    sync.Mutex
}

type file struct {
	Version int            `json:"version"`
	First   uint32         `json:"first"`
	Size    uint32         `json:"size"`
	Slots   map[string]int `json:"slots"` // owner -> slot number
}

// Defaults: 1000000 keeps clear of ordinary host users (the base Incus and podman use); 65536 ids
// per container is what a whole distribution expects (nobody is 65534).
const (
	DefaultFirst = 1000000
	DefaultSize  = 65536
)

// Open returns an allocator persisted at path. A file written with a different first/size is
// refused: the ranges already handed out would no longer match the files on disk.
func Open(path string, first, size uint32) (*Allocator, error) {
	if size == 0 {
		return nil, fmt.Errorf("idmap: range size is 0")
	}
	a := &Allocator{path: path, first: first, size: size,
		max: int((uint64(1)<<32 - 1 - uint64(first)) / uint64(size))}
	f, err := a.load()
	if err != nil {
		return nil, err
	}
	if len(f.Slots) > 0 && (f.First != first || f.Size != size) {
		return nil, fmt.Errorf("idmap: %s was written with ranges of %d from %d, not %d from %d",
			path, f.Size, f.First, size, first)
	}
	return a, nil
}

// Allocate returns owner's range, giving it the lowest free one if it has none.
func (a *Allocator) Allocate(owner string) (Range, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.load()
	if err != nil {
		return Range{}, err
	}
	if n, ok := f.Slots[owner]; ok {
		return a.rng(n), nil
	}
	used := make(map[int]bool, len(f.Slots))
	for _, n := range f.Slots {
		used[n] = true
	}
	n := 0
	for used[n] {
		n++
	}
	if n >= a.max {
		return Range{}, errdefs.Unavailable("no free id range: all %d are in use", a.max)
	}
	f.Slots[owner] = n
	if err := a.save(f); err != nil {
		return Range{}, err
	}
	return a.rng(n), nil
}

// Reserve gives owner exactly r: a container that comes from another host (live migration) keeps
// its range, because its files and CRIU images carry those host ids. r must be one of this
// allocator's ranges (hosts use the same first and size) and free, or owner's already.
func (a *Allocator) Reserve(owner string, r Range) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.Size != a.size || r.Base < a.first || (r.Base-a.first)%a.size != 0 {
		return errdefs.Invalid("id range %d+%d is not one of this host's (ranges of %d from %d): the hosts' id range settings differ",
			r.Base, r.Size, a.size, a.first)
	}
	n := int((r.Base - a.first) / a.size)
	if n >= a.max {
		return errdefs.Invalid("id range %d+%d is beyond this host's ranges", r.Base, r.Size)
	}
	f, err := a.load()
	if err != nil {
		return err
	}
	for o, m := range f.Slots {
		if m == n && o != owner {
			return errdefs.Conflict("id range %d+%d is in use by %s on this host", r.Base, r.Size, o)
		}
	}
	if m, ok := f.Slots[owner]; ok && m != n {
		return errdefs.Conflict("%s already has id range %d here", owner, a.rng(m).Base)
	}
	f.Slots[owner] = n
	return a.save(f)
}

// Lookup returns owner's range, if it has one.
func (a *Allocator) Lookup(owner string) (Range, bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.load()
	if err != nil {
		return Range{}, false, err
	}
	n, ok := f.Slots[owner]
	return a.rng(n), ok, nil
}

// Release frees owner's range; releasing an unknown owner is not an error.
func (a *Allocator) Release(owner string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.load()
	if err != nil {
		return err
	}
	if _, ok := f.Slots[owner]; !ok {
		return nil
	}
	delete(f.Slots, owner)
	return a.save(f)
}

// Owners returns every owner holding a range (for leak checks).
func (a *Allocator) Owners() ([]string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.load()
	if err != nil {
		return nil, err
	}
	var out []string
	for o := range f.Slots {
		out = append(out, o)
	}
	return out, nil
}

func (a *Allocator) rng(n int) Range {
	return Range{Base: a.first + uint32(n)*a.size, Size: a.size}
}

func (a *Allocator) load() (*file, error) {
	f := &file{Version: 1, First: a.first, Size: a.size, Slots: map[string]int{}}
	data, err := os.ReadFile(a.path)
	if os.IsNotExist(err) {
		return f, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, f); err != nil {
		return nil, fmt.Errorf("idmap: %s: %w", a.path, err)
	}
	if f.Slots == nil {
		f.Slots = map[string]int{}
	}
	return f, nil
}

func (a *Allocator) save(f *file) error {
	f.First, f.Size = a.first, a.size
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(a.path, data, 0o600)
}
