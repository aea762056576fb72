package storage

import (
	"context"
	"fmt"
	"path/filepath"

	"tandem/internal/errdefs"
	"tandem/internal/units"
)

// ResizeVolume sets a volume's size: grows an ext4 image and its filesystem (online when mounted
// here), a qcow2 disk (qemu-img; refused while QEMU has it open, see ResizeVolumeLive), or a btrfs
// qgroup limit. Shrinking is done only where it is safe: a qgroup limit above current usage, an
// unmounted ext4 image whose files fit (resize2fs checks). Block disks never shrink.
func (m *Manager) ResizeVolume(ctx context.Context, pool, vol string, size uint64) error {
	return m.ResizeVolumeLive(ctx, pool, vol, size, nil)
}

// ResizeVolumeLive is ResizeVolume for a disk a running VM has open: live grows it through the VM
// (QMP block_resize) instead of qemu-img, and storage validates and records the new size. For an
// ext4 volume attached to a VM the guest then grows its filesystem itself.
func (m *Manager) ResizeVolumeLive(ctx context.Context, pool, vol string, size uint64, live func(ctx context.Context, size uint64) error) error {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	if err := checkSize(size); err != nil {
		return err
	}
	size = roundSize(size)
	op := m.newOp("resize")
	defer m.endOp(op)
	op.Size = size
	v, err := m.begin(ctx, p, typ, name, op, func(v *Volume) error {
		if v.Format == FormatDir {
			return errdefs.Invalid("volume %s is a plain directory on dir pool %q and has no size limit; "+
				"only volumes created with a size (ext4 images) can be resized", v.Ref(), p.Name)
		}
		if l := m.currentLease(p, v.Type, v.Name); l != nil && l.Host != m.host {
			return errdefs.Conflict("volume %s is in use on host %s: resize it there", v.Ref(), l.Host)
		}
		if size > v.Size {
			return fitsFree(p.Name, size-v.Size, freeBytes(p.Path))
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = m.resize(ctx, p, drv, v, size, live)
	if err != nil {
		m.finish(ctx, p, typ, name, op, nil)
		return fmt.Errorf("resize %s to %s: %w", v.Ref(), units.FormatSize(size), spaceError(p.Name, "the resize", err))
	}
	return m.finish(ctx, p, typ, name, op, func(r *Volume) { r.Size = size })
}

func (m *Manager) resize(ctx context.Context, p *Pool, drv poolDriver, v *Volume, size uint64, live func(context.Context, uint64) error) error {
	dir := dataPath(p.Path, v.Type, v.Name)
	file := filepath.Join(dir, fileName(v.Format))
	switch v.Format {
	case FormatSubvol:
		if size < v.Size {
			if used, err := drv.usage(ctx, dir); err == nil && used > size {
				return errdefs.Conflict("volume %s uses %s, more than %s", v.Ref(), units.FormatSize(used), units.FormatSize(size))
			}
		}
		return drv.setLimit(ctx, dir, size)
	case FormatQcow2:
		if size < v.Size {
			return errdefs.Invalid("shrinking block volume %s would cut off data its guest may use; refused", v.Ref())
		}
		if live != nil {
			return live(ctx, size)
		}
		return qemuImgResize(ctx, file, size)
	case FormatExt4:
		inVM := qemuHasOpen(file)
		if size < v.Size {
			if inVM || m.inUseHere(p, v) {
				return errdefs.Conflict("volume %s is in use; ext4 shrinks only offline", v.Ref())
			}
			return shrinkExt4(ctx, file, size)
		}
		if inVM {
			if live == nil {
				return errdefs.Conflict("volume %s is open in a running VM: grow it through the VM (QMP block_resize)", v.Ref())
			}
			return live(ctx, size)
		}
		return growExt4(ctx, file, size, m.mountedPath(p, v) != "")
	}
	return errdefs.Invalid("volume %s (%s) cannot be resized", v.Ref(), v.Format)
}
