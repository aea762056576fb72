package storage

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// CreateVolume makes an empty volume: an ext4 image (custom filesystem volumes, and anything on a
// shared pool), a directory or subvolume (container and image volumes on dir and btrfs pools), or a
// qcow2 disk (block volumes). A failure removes whatever was made.
func (m *Manager) CreateVolume(ctx context.Context, pool string, cfg VolumeConfig) (*Volume, error) {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	v, err := planVolume(p, drv, cfg)
	if err != nil {
		return nil, err
	}
	op := m.newOp("create")
	defer m.endOp(op)
	v.Pending = op
	if err := m.createRecord(ctx, p, v); err != nil {
		return nil, err
	}
	err = m.makeData(ctx, drv, p, v, "", nil)
	return m.commitCreate(ctx, p, drv, v, op, "creating volume "+v.Ref(), err)
}

// planVolume validates a config and decides the volume's format.
func planVolume(p *Pool, drv poolDriver, cfg VolumeConfig) (*Volume, error) {
	v := &Volume{Name: cfg.Name, Type: cfg.Type, ContentType: cfg.ContentType, Size: cfg.Size, State: StateCreating,
		CreatedAt: time.Now().UTC()}
	if v.Type == "" {
		v.Type = TypeCustom
	}
	if !validType(v.Type) {
		return nil, errdefs.Invalid("unknown volume type %s (custom, container, vm)", quoted(v.Type))
	}
	if v.Type == TypeImage {
		return nil, errdefs.Invalid("image volumes are made by the image layer, not by hand")
	}
	if err := ValidateVolumeName("volume", v.Name); err != nil {
		return nil, err
	}
	if v.ContentType == "" {
		v.ContentType = ContentFilesystem
		if v.Type == TypeVM {
			v.ContentType = ContentBlock
		}
	}
	switch v.ContentType {
	case ContentBlock:
		v.Format = FormatQcow2
	case ContentFilesystem:
		v.Format = drv.fsFormat(v.Type, v.Size)
	default:
		return nil, errdefs.Invalid("unknown content type %s (filesystem, block)", quoted(v.ContentType))
	}
	if v.Size == 0 && (v.Format == FormatExt4 || v.Format == FormatQcow2) {
		return nil, errdefs.Invalid("volume %s needs a size (for example 1GiB): it is stored as %s", v.Name, formatWords(v.Format))
	}
	if v.Size != 0 {
		if err := checkSize(v.Size); err != nil {
			return nil, err
		}
		v.Size = roundSize(v.Size)
		if err := fitsFree(p.Name, v.Size, freeBytes(p.Path)); err != nil {
			return nil, err
		}
	}
	return v, nil
}

func formatWords(f string) string {
	switch f {
	case FormatExt4:
		return "an ext4 image"
	case FormatQcow2:
		return "a qcow2 disk"
	case FormatSubvol:
		return "a btrfs subvolume"
	}
	return "a directory"
}

// makeData makes a new volume's data directory and content: empty, or the tree at fromDir.
func (m *Manager) makeData(ctx context.Context, drv poolDriver, p *Pool, v *Volume, fromDir string, rep *reporter) error {
	dir := dataPath(p.Path, v.Type, v.Name)
	if err := drv.makeDir(ctx, dir); err != nil {
		return err
	}
	file := filepath.Join(dir, fileName(v.Format))
	switch v.Format {
	case FormatExt4:
		return makeExt4(ctx, file, v.Size, fromDir)
	case FormatQcow2:
		return qemuImgCreate(ctx, file, v.Size, "")
	case FormatSubvol:
		if v.Size > 0 {
			if err := drv.setLimit(ctx, dir, v.Size); err != nil {
				return err
			}
		}
	}
	if fromDir != "" {
		return copyTree(ctx, fromDir, dir, rep)
	}
	return nil
}

// commitCreate marks a new volume ready, or when err is set removes everything it made.
func (m *Manager) commitCreate(ctx context.Context, p *Pool, drv poolDriver, v *Volume, op *Operation, what string, err error) (*Volume, error) {
	if err == nil {
		err = m.finish(ctx, p, v.Type, v.Name, op, func(r *Volume) {
			r.State, r.Size, r.Base = StateReady, v.Size, v.Base
		})
		if err == nil {
			return m.GetVolume(ctx, p.Name, v.Ref())
		}
	}
	cctx, cancel := bg(ctx)
	defer cancel()
	if cerr := m.purge(cctx, p, drv, v); cerr != nil {
		m.log.Error("roll back", "what", what, "err", cerr)
		return nil, fmt.Errorf("%s: %w (roll-back failed: %v; Recover retries)", what, err, cerr)
	}
	return nil, failed(p.Name, what, err)
}

// purge removes a volume entirely: snapshots (listed or half made), data, scratch, record, locks.
func (m *Manager) purge(ctx context.Context, p *Pool, drv poolDriver, v *Volume) error {
	snaps, _ := filepath.Glob(snapPath(p.Path, v.Type, v.Name, "*"))
	if v.Pending != nil && v.Pending.Tmp != "" {
		snaps = append(snaps, v.Pending.Tmp)
	}
	for _, dir := range append(snaps, dataPath(p.Path, v.Type, v.Name)) {
		if exists(dir) {
			if err := drv.removeDir(ctx, dir); err != nil {
				return err
			}
		}
	}
	return m.removeVolumeFiles(p, v.Type, v.Name)
}

// DeleteVolume removes a volume and its snapshots. It is refused while the volume is attached
// (errdefs.Conflict naming the users), busy, or open (mounted, leased, or held by QEMU).
func (m *Manager) DeleteVolume(ctx context.Context, pool, vol string) error {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	if typ == TypeImage {
		if users, err := m.imageUsers(p, name); err != nil || len(users) > 0 {
			if err != nil {
				return err
			}
			return errdefs.Conflict("image volume %s is the base of %s", name, fmt.Sprint(users))
		}
	}
	op := m.newOp("delete")
	defer m.endOp(op)
	v, err := m.update(ctx, p, typ, name, func(v *Volume) error {
		if len(v.UsedBy) > 0 {
			return errdefs.Conflict("volume %s is attached to %s: detach it first", v.Ref(), usersOf(v))
		}
		if err := busy(p, v); err != nil {
			return err
		}
		if why := m.openBy(p, v); why != "" {
			return errdefs.Conflict("volume %s is in use (%s)", v.Ref(), why)
		}
		v.State, v.Pending = StateDeleting, op
		return nil
	})
	if err != nil {
		return err
	}
	if err := m.purge(ctx, p, drv, v); err != nil {
		return fmt.Errorf("delete volume %s: %w (Recover finishes it)", v.Ref(), err)
	}
	if v.Base != "" {
		if err := m.gcImage(ctx, p, drv, v.Base); err != nil {
			m.log.Warn("keep an image volume", "pool", p.Name, "image", v.Base, "err", err)
		}
	}
	return nil
}

// openBy says who has the volume's data open right now ("" for nobody known).
func (m *Manager) openBy(p *Pool, v *Volume) string {
	if m.inUseHere(p, v) {
		return "mounted on this host"
	}
	if l := m.currentLease(p, v.Type, v.Name); l != nil {
		return fmt.Sprintf("leased by %s on host %s", l.Holder, l.Host)
	}
	if f := fileName(v.Format); f != "" && qemuHasOpen(filepath.Join(dataPath(p.Path, v.Type, v.Name), f)) {
		return "open in a running QEMU"
	}
	return heldBy(p, v)
}

// heldBy names the processes and loop devices of this host that use the volume's data, whatever
// the records say: a guest whose instance record was lost still runs from its root.
func heldBy(p *Pool, v *Volume) string {
	path := filepath.Join(dataPath(p.Path, v.Type, v.Name), fileName(v.Format))
	hs, err := fsutil.Holders(path)
	// A holder may be on its way out: a loop device of an image just unmounted (autoclear), an
	// aborted move's rsync server still being killed. Give them 3 s.
	for i := 0; i < 30 && err == nil && len(hs) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
		hs, err = fsutil.Holders(path)
	}
	if err != nil || len(hs) == 0 {
		return ""
	}
	return "used on this host: " + fsutil.DescribeHolders(hs) + "; an instance whose record tandemd lost? `tandem host orphans` lists them"
}

// GetVolume returns a volume's record with its current usage where that is cheap to learn.
func (m *Manager) GetVolume(ctx context.Context, pool, vol string) (*Volume, error) {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	v, err := m.readVolume(p, vol)
	if err != nil {
		return nil, err
	}
	dir := dataPath(p.Path, v.Type, v.Name)
	switch v.Format {
	case FormatExt4, FormatQcow2:
		var st unix.Stat_t
		if unix.Stat(filepath.Join(dir, fileName(v.Format)), &st) == nil {
			v.Usage = uint64(st.Blocks) * 512
		}
	case FormatSubvol, FormatDir:
		if v.State == StateReady {
			v.Usage, _ = drv.usage(ctx, dir)
		}
	}
	return v, nil
}

// ListVolumes returns a pool's volumes sorted by TYPE/NAME.
func (m *Manager) ListVolumes(_ context.Context, pool string) ([]Volume, error) {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	recs, err := m.listRecords(p)
	if err != nil {
		return nil, err
	}
	out := make([]Volume, 0, len(recs))
	for _, v := range recs {
		out = append(out, *v)
	}
	return out, nil
}
