package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
)

// SnapshotVolume records the volume's current data as snap: a read-only subvolume snapshot on
// btrfs (instant), a (reflinked where possible) copy elsewhere. A snapshot of a volume in use is
// crash-consistent at best: freeze or pause the instance first for a clean one.
func (m *Manager) SnapshotVolume(ctx context.Context, pool, vol, snap string) error {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	if err := ValidateVolumeName("snapshot", snap); err != nil {
		return err
	}
	op := m.newOp("snapshot")
	defer m.endOp(op)
	op.Snapshot = snap
	v, err := m.begin(ctx, p, typ, name, op, func(v *Volume) error {
		if hasSnapshot(v, snap) {
			return errdefs.Exists("volume %s already has a snapshot %q", v.Ref(), snap)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if mp := m.mountedPath(p, v); mp != "" { // push the page cache into the image first
		syncFS(mp)
	}
	src, dst := dataPath(p.Path, typ, name), snapPath(p.Path, typ, name, snap)
	err = drv.cloneDir(ctx, src, dst, true, m.reporterFor(ctx, "snapshot "+v.Ref(), src))
	if err != nil {
		cctx, cancel := bg(ctx)
		defer cancel()
		if exists(dst) {
			if cerr := drv.removeDir(cctx, dst); cerr != nil {
				return fmt.Errorf("snapshot %s: %w (clean-up failed: %v; Recover retries)", v.Ref(), err, cerr)
			}
		}
		m.finish(ctx, p, typ, name, op, nil)
		return fmt.Errorf("snapshot %s: %w", v.Ref(), spaceError(p.Name, "the snapshot", err))
	}
	return m.finish(ctx, p, typ, name, op, func(r *Volume) {
		r.Snapshots = append(r.Snapshots, Snapshot{Name: snap, Size: r.Size, CreatedAt: time.Now().UTC()})
	})
}

func hasSnapshot(v *Volume, snap string) bool {
	return slices.ContainsFunc(v.Snapshots, func(s Snapshot) bool { return s.Name == snap })
}

// reporterFor reports progress on copying the tree or file at path.
func (m *Manager) reporterFor(ctx context.Context, msg, path string) *reporter {
	total, _ := treeSize(path)
	return newReporter(ctx, msg, total)
}

func syncFS(path string) {
	if f, err := os.Open(path); err == nil {
		unix.Syncfs(int(f.Fd()))
		f.Close()
	}
}

// RestoreVolume brings a volume's data back to snapshot snap. It is refused while the volume is
// open (mounted, leased or held by QEMU): stop the instance first. The new data is prepared beside
// the old and swapped in by two renames, which Recover completes after a crash.
func (m *Manager) RestoreVolume(ctx context.Context, pool, vol, snap string) error {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	op := m.newOp("restore")
	defer m.endOp(op)
	op.Snapshot, op.Tmp = snap, tmpPath(p.Path, op.ID)
	var size uint64
	v, err := m.begin(ctx, p, typ, name, op, func(v *Volume) error {
		i := slices.IndexFunc(v.Snapshots, func(s Snapshot) bool { return s.Name == snap })
		if i < 0 {
			return errdefs.NotFound("volume %s has no snapshot %q", v.Ref(), snap)
		}
		if why := m.openBy(p, v); why != "" {
			return errdefs.Conflict("volume %s is in use (%s): stop its instance before a restore", v.Ref(), why)
		}
		size = v.Snapshots[i].Size
		return nil
	})
	if err != nil {
		return err
	}
	err = m.restore(ctx, p, drv, v, op, size)
	cctx, cancel := bg(ctx)
	defer cancel()
	swapped, cerr := m.settleRestore(cctx, p, drv, v, op)
	if cerr != nil {
		return fmt.Errorf("restore %s: %w (Recover finishes the clean-up)", v.Ref(), errors.Join(err, cerr))
	}
	if !swapped {
		m.finish(ctx, p, typ, name, op, nil)
		return fmt.Errorf("restore %s: %w", v.Ref(), spaceError(p.Name, "the restore", err))
	}
	return m.finish(ctx, p, typ, name, op, func(r *Volume) { r.Size = size })
}

func (m *Manager) restore(ctx context.Context, p *Pool, drv poolDriver, v *Volume, op *Operation, size uint64) error {
	data := dataPath(p.Path, v.Type, v.Name)
	src := snapPath(p.Path, v.Type, v.Name, op.Snapshot)
	if err := os.Mkdir(op.Tmp, 0o700); err != nil {
		return err
	}
	fresh, old := op.Tmp+"/new", op.Tmp+"/old"
	if err := drv.cloneDir(ctx, src, fresh, false, m.reporterFor(ctx, "restore "+v.Ref(), src)); err != nil {
		return err
	}
	if v.Format == FormatSubvol && size > 0 {
		if err := drv.setLimit(ctx, fresh, size); err != nil {
			return err
		}
	}
	if err := os.Rename(data, old); err != nil {
		return err
	}
	return os.Rename(fresh, data)
}

// settleRestore leaves the volume whole after a restore stopped at any step, and says whether the
// snapshot's data is now in place: the new copy goes in if the old data was already moved aside
// (that happens only once the copy is complete), and the scratch is removed.
func (m *Manager) settleRestore(ctx context.Context, p *Pool, drv poolDriver, v *Volume, op *Operation) (swapped bool, err error) {
	data, fresh, old := dataPath(p.Path, v.Type, v.Name), op.Tmp+"/new", op.Tmp+"/old"
	swapped = exists(old)
	if !exists(data) {
		back := old
		if exists(fresh) {
			back = fresh
		}
		if err := os.Rename(back, data); err != nil {
			return false, err
		}
		swapped = back == fresh
	}
	return swapped, removeScratch(ctx, drv, op.Tmp)
}

// DeleteSnapshot removes one snapshot of a volume.
func (m *Manager) DeleteSnapshot(ctx context.Context, pool, vol, snap string) error {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	op := m.newOp("delete-snapshot")
	defer m.endOp(op)
	op.Snapshot = snap
	_, err = m.begin(ctx, p, typ, name, op, func(v *Volume) error {
		if !hasSnapshot(v, snap) {
			return errdefs.NotFound("volume %s has no snapshot %q", v.Ref(), snap)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.finishDeleteSnapshot(ctx, p, drv, typ, name, op)
}

func (m *Manager) finishDeleteSnapshot(ctx context.Context, p *Pool, drv poolDriver, typ, name string, op *Operation) error {
	if dir := snapPath(p.Path, typ, name, op.Snapshot); exists(dir) {
		if err := drv.removeDir(ctx, dir); err != nil {
			return fmt.Errorf("delete snapshot %s: %w (Recover finishes it)", op.Snapshot, err)
		}
	}
	return m.finish(ctx, p, typ, name, op, func(r *Volume) {
		r.Snapshots = slices.DeleteFunc(r.Snapshots, func(s Snapshot) bool { return s.Name == op.Snapshot })
	})
}
