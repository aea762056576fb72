package storage

import (
	"context"
	"os"
	"path/filepath"
	"sync"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// mountRef counts the users of a volume handed out by MountVolume.
type mountRef struct {
	path  string
	count int
}

// MountVolume makes a filesystem volume's files available on this host and returns their path:
// the data directory itself (dir, subvol) or the ext4 image loop-mounted under <Dir>/mounts. Calls
// are counted; the last unmount unmounts. A mount left by a previous daemon is adopted, so a driver
// re-attaching to a running container after a restart calls MountVolume again. On shared pools
// call Acquire first: the mount itself takes no lease.
func (m *Manager) MountVolume(ctx context.Context, pool, vol string) (string, func() error, error) {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return "", nil, err
	}
	v, err := m.readVolume(p, vol)
	if err != nil {
		return "", nil, err
	}
	if v.State != StateReady {
		return "", nil, errdefs.Conflict("volume %s in pool %q is %s", v.Ref(), p.Name, v.State)
	}
	if v.ContentType != ContentFilesystem {
		return "", nil, errdefs.Invalid("volume %s is a block volume: give VolumePath to the VM instead", v.Ref())
	}
	key := p.Name + "/" + v.Ref()
	m.mountMu.Lock()
	defer m.mountMu.Unlock()
	if ref := m.mounts[key]; ref != nil {
		ref.count++
		return ref.path, m.unmountFunc(key, v.Format), nil
	}
	path := dataPath(p.Path, v.Type, v.Name)
	if v.Format == FormatExt4 {
		path = m.mountPoint(p.Name, v.Type, v.Name)
		if !mountedAt(path) {
			if err := loopMount(ctx, filepath.Join(dataPath(p.Path, v.Type, v.Name), fileName(v.Format)), path, false); err != nil {
				return "", nil, err
			}
		}
	}
	m.mounts[key] = &mountRef{path: path, count: 1}
	return path, m.unmountFunc(key, v.Format), nil
}

func (m *Manager) unmountFunc(key, format string) func() error {
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			m.mountMu.Lock()
			defer m.mountMu.Unlock()
			ref := m.mounts[key]
			if ref == nil {
				return
			}
			if ref.count > 1 || format != FormatExt4 {
				if ref.count--; ref.count == 0 {
					delete(m.mounts, key)
				}
				return
			}
			if err = loopUnmount(context.Background(), ref.path); err == nil {
				delete(m.mounts, key)
			}
		})
		return err
	}
}

// inUseHere tells whether this host has the volume mounted (by this daemon or a previous one).
func (m *Manager) inUseHere(p *Pool, v *Volume) bool {
	m.mountMu.Lock()
	ref := m.mounts[p.Name+"/"+v.Ref()]
	m.mountMu.Unlock()
	if ref != nil {
		return true
	}
	return v.Format == FormatExt4 && mountedAt(m.mountPoint(p.Name, v.Type, v.Name))
}

// mountedPath is where this host has an ext4 volume mounted, or "".
func (m *Manager) mountedPath(p *Pool, v *Volume) string {
	if mp := m.mountPoint(p.Name, v.Type, v.Name); v.Format == FormatExt4 && mountedAt(mp) {
		return mp
	}
	return ""
}

func (m *Manager) mountPoint(pool, typ, name string) string {
	return filepath.Join(m.dir, "mounts", pool, typ, name)
}

// VolumePath is the file to give QEMU for a block volume (qcow2) or an ext4 volume (raw), and the
// data directory of a directory volume.
func (m *Manager) VolumePath(pool, vol string) (string, error) {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return "", err
	}
	v, err := m.readVolume(p, vol)
	if err != nil {
		return "", err
	}
	return filepath.Join(dataPath(p.Path, v.Type, v.Name), fileName(v.Format)), nil
}

func loopMount(ctx context.Context, image, at string, readonly bool) error {
	if !isRoot() {
		return errdefs.Unavailable("mounting an ext4 volume needs root")
	}
	if err := fsutil.LoopMount(ctx, image, at, readonly); err != nil {
		os.Remove(at)
		return err
	}
	return nil
}

func loopUnmount(_ context.Context, at string) error {
	if err := fsutil.Unmount(at); err != nil {
		return errdefs.Conflict("cannot unmount %s (still in use?): %v", at, err)
	}
	return removeIfExists(at)
}

func mountedAt(path string) bool { return fsutil.MountedAt(path) }
