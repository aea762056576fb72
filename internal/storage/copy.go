package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"tandem/internal/errdefs"
)

// CopyVolume copies a volume (not its snapshots) to dstName in dstPool ("NAME" keeps the source's
// type, "TYPE/NAME" sets it). Within one btrfs pool it is an instant snapshot; elsewhere the data is
// copied with progress, and a qcow2 overlay moving to another pool is flattened. A copy that fails
// or is cancelled is removed; one cut short by a crash is removed by Recover. Copying a volume in
// use gives a crash-consistent copy at best.
func (m *Manager) CopyVolume(ctx context.Context, srcPool, srcVol, dstPool, dstName string) (*Volume, error) {
	sp, sdrv, err := m.usablePool(srcPool)
	if err != nil {
		return nil, err
	}
	dp, ddrv, err := m.usablePool(dstPool)
	if err != nil {
		return nil, err
	}
	src, err := m.readVolume(sp, srcVol)
	if err != nil {
		return nil, err
	}
	if err := busy(sp, src); err != nil {
		return nil, err
	}
	typ, name := src.Type, dstName
	if strings.Contains(dstName, "/") {
		if typ, name, err = parseRef(dstName); err != nil {
			return nil, err
		}
	} else if err := ValidateVolumeName("volume", name); err != nil {
		return nil, err
	}
	if typ == TypeImage {
		return nil, errdefs.Invalid("image volumes cannot be copied by hand")
	}
	srcData := dataPath(sp.Path, src.Type, src.Name)
	dst := &Volume{Name: name, Type: typ, ContentType: src.ContentType, Size: src.Size, State: StateCreating,
		CreatedAt: time.Now().UTC()}
	dst.Format = src.Format
	if src.ContentType == ContentFilesystem {
		dst.Format = ddrv.fsFormat(typ, src.Size)
	}
	sameBtrfs := sp.Name == dp.Name && dp.Driver == DriverBtrfs && src.Format == dst.Format
	if !sameBtrfs {
		need := src.Size
		if need == 0 {
			need, _ = diskUsage(srcData)
		}
		if err := fitsFree(dp.Name, need, freeBytes(dp.Path)); err != nil {
			return nil, err
		}
	}
	if dst.Format == FormatExt4 && dst.Size == 0 { // a directory becoming an image needs a size
		used, _ := diskUsage(srcData)
		dst.Size = roundSize(max(DefaultRootSize, used*2))
	}
	if sp.Name == dp.Name { // a base is per pool: a copy elsewhere is flattened or independent
		dst.Base = src.Base
	}
	op := m.newOp("copy")
	defer m.endOp(op)
	op.Source = sp.Name + "/" + src.Ref()
	dst.Pending = op
	if err := m.createRecordWithBase(ctx, dp, dst); err != nil {
		return nil, err
	}
	if mp := m.mountedPath(sp, src); mp != "" {
		syncFS(mp)
	}
	err = m.copyData(ctx, sp, sdrv, src, dp, ddrv, dst, sameBtrfs)
	return m.commitCreate(ctx, dp, ddrv, dst, op, "copying "+src.Ref()+" to "+dst.Ref(), err)
}

// copyData fills dst's data directory from src's.
func (m *Manager) copyData(ctx context.Context, sp *Pool, sdrv poolDriver, src *Volume, dp *Pool, ddrv poolDriver, dst *Volume, sameBtrfs bool) error {
	srcData, dstData := dataPath(sp.Path, src.Type, src.Name), dataPath(dp.Path, dst.Type, dst.Name)
	msg := "copy " + src.Ref()
	if sameBtrfs {
		if err := ddrv.cloneDir(ctx, srcData, dstData, false, nil); err != nil {
			return err
		}
		if dst.Format == FormatSubvol && dst.Size > 0 {
			return ddrv.setLimit(ctx, dstData, dst.Size)
		}
		return nil
	}
	srcFile := filepath.Join(srcData, fileName(src.Format))
	dstFile := filepath.Join(dstData, fileName(dst.Format))
	switch {
	case src.Format == FormatQcow2 && src.Base != "" && dst.Base == "":
		if err := ddrv.makeDir(ctx, dstData); err != nil {
			return err
		}
		return qemuImgConvert(ctx, srcFile, "qcow2", dstFile, msg)
	case src.Format == dst.Format && fileName(src.Format) != "": // one image file
		if err := ddrv.makeDir(ctx, dstData); err != nil {
			return err
		}
		return copyFile(ctx, srcFile, dstFile, m.reporterFor(ctx, msg, srcFile))
	case dst.Format == FormatExt4: // a directory tree into a new image
		return m.makeData(ctx, ddrv, dp, dst, srcData, nil)
	case src.Format == FormatExt4: // an image's files into a directory
		return m.withImageMounted(ctx, srcFile, func(dir string) error {
			return m.makeData(ctx, ddrv, dp, dst, dir, m.reporterFor(ctx, msg, dir))
		})
	default: // tree to tree: dir and subvol
		return m.makeData(ctx, ddrv, dp, dst, srcData, m.reporterFor(ctx, msg, srcData))
	}
}

// withImageMounted mounts an ext4 image read-only on a scratch directory for fn.
func (m *Manager) withImageMounted(ctx context.Context, image string, fn func(dir string) error) error {
	at, err := os.MkdirTemp(filepath.Join(m.dir, "pools"), ".ro-")
	if err != nil {
		return err
	}
	defer os.Remove(at)
	if err := loopMount(ctx, image, at, true); err != nil {
		return fmt.Errorf("mount %s: %w", image, err)
	}
	err = fn(at)
	cctx, cancel := bg(ctx)
	defer cancel()
	if uerr := loopUnmount(cctx, at); uerr != nil && err == nil {
		err = uerr
	}
	return err
}
