package instance

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/fake"
	"tandem/internal/errdefs"
	"tandem/internal/storage"
)

// fakeVolumes is an in-memory storage manager: pools, root and custom volumes with snapshots,
// and leases, with errors to inject per call.
type fakeVolumes struct {
	mu     sync.Mutex
	shared map[string]bool            // pool name -> shared
	vols   map[string]*storage.Volume // "pool/TYPE/NAME"
	leases map[string]string          // "pool/TYPE/NAME" -> holder ("elsewhere": another host)
	fail   map[string]error           // method -> error, returned once
	calls  []string
	// snapGate, if set, holds SnapshotVolume until it is closed (a snapshot caught mid-copy).
	snapGate chan struct{}
}

func newFakeVolumes() *fakeVolumes {
	return &fakeVolumes{shared: map[string]bool{"default": false, "sh": true}, vols: map[string]*storage.Volume{},
		leases: map[string]string{}, fail: map[string]error{}}
}

func (f *fakeVolumes) enter(method string) error {
	f.calls = append(f.calls, method)
	if err := f.fail[method]; err != nil {
		delete(f.fail, method)
		return err
	}
	return nil
}

func (f *fakeVolumes) vol(pool, ref string) (*storage.Volume, error) {
	if _, ok := f.shared[pool]; !ok {
		return nil, errdefs.NotFound("storage pool %q not found", pool)
	}
	if v := f.vols[pool+"/"+ref]; v != nil {
		return v, nil
	}
	return nil, errdefs.NotFound("volume %s not found in pool %q", ref, pool)
}

func (f *fakeVolumes) GetPool(_ context.Context, name string) (*storage.Pool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	shared, ok := f.shared[name]
	if !ok {
		return nil, errdefs.NotFound("storage pool %q not found", name)
	}
	d := storage.DriverDir
	if shared {
		d = storage.DriverShared
	}
	return &storage.Pool{Name: name, Driver: d}, nil
}

func (f *fakeVolumes) GetVolume(_ context.Context, pool, ref string) (*storage.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := f.vol(pool, ref)
	if err != nil {
		return nil, err
	}
	c := *v
	c.Snapshots = slices.Clone(v.Snapshots)
	return &c, nil
}

// Attach and Detach keep used_by on volumes the fake has, and accept any other.
func (f *fakeVolumes) Attach(_ context.Context, pool, ref, instance string, readonly bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, err := f.vol(pool, customRef(ref)); err == nil {
		v.UsedBy = slices.DeleteFunc(v.UsedBy, func(a storage.Attachment) bool { return a.Instance == instance })
		v.UsedBy = append(v.UsedBy, storage.Attachment{Instance: instance, ReadOnly: readonly, Host: "here"})
	}
	return nil
}

func (f *fakeVolumes) Detach(_ context.Context, pool, ref, instance string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if v, err := f.vol(pool, customRef(ref)); err == nil {
		v.UsedBy = slices.DeleteFunc(v.UsedBy, func(a storage.Attachment) bool { return a.Instance == instance })
	}
	return nil
}

func (f *fakeVolumes) LocalAttachments(context.Context) ([]storage.VolumeAttachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []storage.VolumeAttachment
	for key, v := range f.vols {
		if v.Type == storage.TypeImage {
			continue
		}
		for _, a := range v.UsedBy {
			out = append(out, storage.VolumeAttachment{Pool: strings.SplitN(key, "/", 2)[0], Volume: v.Ref(), Attachment: a})
		}
	}
	return out, nil
}

// addCustom makes a custom volume in the fake.
func (f *fakeVolumes) addCustom(pool, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vols[pool+"/custom/"+name] = &storage.Volume{Pool: pool, Name: name, Type: storage.TypeCustom,
		ContentType: storage.ContentBlock, State: storage.StateReady}
}

func (f *fakeVolumes) usedBy(pool, name string) []storage.Attachment {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.vols[pool+"/custom/"+name].UsedBy)
}

func (f *fakeVolumes) Acquire(_ context.Context, pool, ref, holder string) (func() error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Acquire"); err != nil {
		return nil, err
	}
	key := pool + "/" + ref
	if h, ok := f.leases[key]; ok {
		return nil, errdefs.Conflict("volume %s is in use by %s", ref, h)
	}
	f.leases[key] = holder
	var once sync.Once
	return func() error {
		once.Do(func() {
			f.mu.Lock()
			delete(f.leases, key)
			f.mu.Unlock()
		})
		return nil
	}, nil
}

func (f *fakeVolumes) leased(pool, ref string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.leases[pool+"/"+ref]
	return ok
}

func (f *fakeVolumes) MountVolume(context.Context, string, string) (string, func() error, error) {
	return "", nil, errors.New("fake: no mounts")
}

func (f *fakeVolumes) VolumePath(pool, ref string) (string, error) {
	return "/pools/" + pool + "/" + ref, nil
}

func (f *fakeVolumes) CreateInstanceRoot(ctx context.Context, pool, instance, kind string, src storage.ImageSource, size uint64) (*storage.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("CreateInstanceRoot"); err != nil {
		return nil, err
	}
	if _, err := f.vol(pool, kind+"/"+instance); err == nil {
		return nil, errdefs.Exists("volume %s/%s already exists", kind, instance)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	if src.Prepare != nil {
		done, err := src.Prepare(ctx, &src)
		if err != nil {
			return nil, err
		}
		done()
	}
	format := storage.FormatDir
	switch {
	case kind == storage.TypeVM:
		format = storage.FormatQcow2
	case f.shared[pool] || size > 0:
		format = storage.FormatExt4
	}
	v := &storage.Volume{Pool: pool, Name: instance, Type: kind, Format: format, Size: size, State: storage.StateReady,
		UsedBy: []storage.Attachment{{Instance: instance, Host: "here"}}}
	f.vols[pool+"/"+kind+"/"+instance] = v
	return v, nil
}

func (f *fakeVolumes) AdoptInstanceRoot(_ context.Context, pool, instance, kind string, _ bool) (*storage.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := f.vol(pool, kind+"/"+instance)
	if err != nil {
		return nil, err
	}
	v.UsedBy = append(v.UsedBy, storage.Attachment{Instance: instance, Host: "here"})
	return v, nil
}

func (f *fakeVolumes) DeleteInstanceRoot(_ context.Context, pool, instance, kind string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DeleteInstanceRoot"); err != nil {
		return err
	}
	key := pool + "/" + kind + "/" + instance
	v := f.vols[key]
	if v == nil {
		return nil
	}
	v.UsedBy = slices.DeleteFunc(v.UsedBy, func(a storage.Attachment) bool { return a.Host == "here" })
	if len(v.UsedBy) > 0 {
		return nil
	}
	if _, ok := f.leases[key]; ok {
		return errdefs.Conflict("volume %s is in use", kind+"/"+instance)
	}
	delete(f.vols, key)
	return nil
}

func (f *fakeVolumes) InstanceRoot(_ context.Context, pool, instance, kind string) (*storage.RootInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, err := f.vol(pool, kind+"/"+instance)
	if err != nil {
		return nil, err
	}
	return &storage.RootInfo{Path: "/pools/" + pool + "/" + kind + "/" + instance, Format: v.Format, Shared: f.shared[pool], Size: v.Size}, nil
}

func (f *fakeVolumes) ResizeVolume(_ context.Context, pool, ref string, size uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("ResizeVolume"); err != nil {
		return err
	}
	v, err := f.vol(pool, ref)
	if err != nil {
		return err
	}
	v.Size = size
	return nil
}

func (f *fakeVolumes) SnapshotVolume(_ context.Context, pool, ref, snap string) error {
	if f.snapGate != nil {
		<-f.snapGate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("SnapshotVolume"); err != nil {
		return err
	}
	v, err := f.vol(pool, ref)
	if err != nil {
		return err
	}
	v.Snapshots = append(v.Snapshots, storage.Snapshot{Name: snap, Size: v.Size, CreatedAt: time.Now()})
	return nil
}

func (f *fakeVolumes) RestoreVolume(_ context.Context, pool, ref, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("RestoreVolume"); err != nil {
		return err
	}
	if _, err := f.vol(pool, ref); err != nil {
		return err
	}
	if h, ok := f.leases[pool+"/"+ref]; ok {
		return errdefs.Conflict("volume %s is in use by %s", ref, h)
	}
	return nil
}

func (f *fakeVolumes) DeleteSnapshot(_ context.Context, pool, ref, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DeleteSnapshot"); err != nil {
		return err
	}
	v, err := f.vol(pool, ref)
	if err != nil {
		return err
	}
	n := len(v.Snapshots)
	v.Snapshots = slices.DeleteFunc(v.Snapshots, func(s storage.Snapshot) bool { return s.Name == snap })
	if len(v.Snapshots) == n {
		return errdefs.NotFound("no snapshot %q", snap)
	}
	return nil
}

// rootFake is the fake driver with roots on pools and stateful snapshots, recording what it was
// given.
type rootFake struct {
	*fake.Driver
	mu         sync.Mutex
	failCreate error
	failState  error
	roots      map[string]*driver.RootDisk // id -> the root its last Create or Start saw
	states     map[string][]string         // id -> stateful snapshots
	resumeFrom map[string]string           // id -> the snapshot the next start resumes
	resumed    map[string]string           // id -> what its last start resumed ("": booted)
	paused     int                         // pauses seen
}

func newRootFake(d *fake.Driver) *rootFake {
	return &rootFake{Driver: d, roots: map[string]*driver.RootDisk{}, states: map[string][]string{},
		resumeFrom: map[string]string{}, resumed: map[string]string{}}
}

func (r *rootFake) RootSource(_ context.Context, image string) (driver.RootSource, error) {
	return driver.RootSource{Fingerprint: image, Dir: "/images/" + image}, nil
}

func (r *rootFake) Create(ctx context.Context, spec *driver.Spec) (*driver.Handle, error) {
	r.mu.Lock()
	err := r.failCreate
	r.roots[spec.ID] = spec.Root
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return r.Driver.Create(ctx, spec)
}

func (r *rootFake) Start(ctx context.Context, h *driver.Handle) error {
	r.mu.Lock()
	r.roots[h.ID] = h.Spec.Root
	r.resumed[h.ID] = r.resumeFrom[h.ID]
	delete(r.resumeFrom, h.ID)
	r.mu.Unlock()
	return r.Driver.Start(ctx, h)
}

func (r *rootFake) Pause(ctx context.Context, h *driver.Handle) error {
	r.mu.Lock()
	r.paused++
	r.mu.Unlock()
	return r.Driver.Pause(ctx, h)
}

func (r *rootFake) SnapshotState(_ context.Context, h *driver.Handle, snap string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failState != nil {
		return r.failState
	}
	r.states[h.ID] = append(r.states[h.ID], snap)
	return nil
}

func (r *rootFake) StateSnapshots(_ context.Context, h *driver.Handle) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states[h.ID]), nil
}

func (r *rootFake) RestoreState(_ context.Context, h *driver.Handle, snap string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resumeFrom[h.ID] = snap
	return nil
}

func (r *rootFake) DeleteStateSnapshot(_ context.Context, h *driver.Handle, snap string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states[h.ID] = slices.DeleteFunc(r.states[h.ID], func(s string) bool { return s == snap })
	return nil
}

var (
	_ driver.RootSourcer      = (*rootFake)(nil)
	_ driver.StateSnapshotter = (*rootFake)(nil)
	_ Volumes                 = (*fakeVolumes)(nil)
)

func storageSource() storage.ImageSource {
	return storage.ImageSource{Fingerprint: "img", RootfsDir: "/images/img"}
}

func (f *fakeVolumes) CopyVolume(_ context.Context, srcPool, srcRef, dstPool, dstRef string) (*storage.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("CopyVolume"); err != nil {
		return nil, err
	}
	src, err := f.vol(srcPool, srcRef)
	if err != nil {
		return nil, err
	}
	if _, err := f.vol(dstPool, dstRef); err == nil {
		return nil, errdefs.Exists("volume %s already exists", dstRef)
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return nil, err
	}
	typ, name, _ := strings.Cut(dstRef, "/")
	v := &storage.Volume{Pool: dstPool, Name: name, Type: typ, Format: src.Format, Size: src.Size, State: storage.StateReady}
	f.vols[dstPool+"/"+dstRef] = v
	return v, nil
}
