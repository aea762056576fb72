package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/units"
)

// Instance roots. A container root is a copy of the image's rootfs: a snapshot of a per-pool
// image subvolume on btrfs (instant, blocks shared), a copied tree on a dir pool, or an ext4 image
// filled by mkfs.ext4 -d when it has a size (shared pools always; dir pools when limits.disk is
// set). A VM root is a qcow2 overlay over a per-pool qcow2 copy of the image's disk. Per-pool image
// copies are volumes of type image; a volume made from one names it in Base, and the copy is
// removed when the last such volume goes (the reference count is the set of records naming it,
// so it can never drift from the truth).

// CreateInstanceRoot makes the root volume "KIND/INSTANCE" from an image, recorded as used by the
// instance. size is limits.disk (0: none for directory roots, DefaultRootSize for ext4 roots, the
// image's disk size for VMs).
func (m *Manager) CreateInstanceRoot(ctx context.Context, pool, instance, kind string, src ImageSource, size uint64) (*Volume, error) {
	p, drv, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	if err := ValidateVolumeName("instance", instance); err != nil {
		return nil, err
	}
	v := &Volume{Name: instance, Type: kind, Size: size, State: StateCreating, CreatedAt: time.Now().UTC(),
		UsedBy: []Attachment{{Instance: instance, Host: m.host}}}
	if size != 0 {
		if err := checkSize(size); err != nil {
			return nil, err
		}
		v.Size = roundSize(size)
	}
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	if kind == TypeVM {
		v.ContentType, v.Format = ContentBlock, FormatQcow2
	} else {
		v.ContentType, v.Format = ContentFilesystem, drv.fsFormat(kind, v.Size)
		if v.Format == FormatExt4 && v.Size == 0 {
			v.Size = DefaultRootSize
		}
	}
	if v.Size > 0 {
		if err := fitsFree(p.Name, v.Size, freeBytes(p.Path)); err != nil {
			return nil, err
		}
	}
	if free := freeBytes(p.Path); kind == TypeVM && free < m.minFree {
		return nil, errdefs.Unavailable("pool %q has only %s free: a VM's disk grows as the guest writes, and in a full pool "+
			"QEMU pauses the guest on the write error; free space or put the VM on another pool (--storage)",
			p.Name, units.FormatSize(free))
	}
	op := m.newOp("create")
	defer m.endOp(op)
	v.Pending = op
	what := fmt.Sprintf("creating the root disk of %s", instance)
	rootData := dataPath(p.Path, kind, instance)

	switch {
	case v.Format == FormatDir || v.Format == FormatExt4:
		done, perr := prepareSource(ctx, kind, &src) // not err: the copy's error below must reach commitCreate
		if perr != nil {
			return nil, perr
		}
		defer done()
		if err := rootfsFits(src.RootfsDir, v.Size, v.Format); err != nil {
			return nil, err
		}
		if err := m.createRecord(ctx, p, v); err != nil {
			return nil, err
		}
		err = m.makeData(ctx, drv, p, v, src.RootfsDir, m.reporterFor(ctx, what, src.RootfsDir))
	default: // btrfs containers and all VMs start from the pool's copy of the image
		imgName := src.Fingerprint
		if kind == TypeVM {
			imgName += ".vm"
		}
		if err := ValidateVolumeName("image fingerprint", src.Fingerprint); err != nil {
			return nil, err
		}
		err = m.withImage(ctx, p, drv, imgName, kind, src, func(img *Volume) error {
			v.Base = img.Name
			if kind == TypeContainer && v.Size > 0 { // a qgroup limit counts the blocks shared with the image
				if used, err := drv.usage(ctx, dataPath(p.Path, TypeImage, img.Name)); err == nil && used+used/10 > v.Size {
					return errdefs.Invalid("limits.disk %s is too small for the image (%s used)", units.FormatSize(v.Size), units.FormatSize(used))
				}
			}
			if kind == TypeVM {
				if v.Size == 0 {
					v.Size = img.Size
				}
				if v.Size < img.Size {
					return errdefs.Invalid("root disk size %s is smaller than the image's disk (%s)", units.FormatSize(v.Size), units.FormatSize(img.Size))
				}
			}
			return m.createRecordLocked(p, v)
		})
		if err != nil {
			m.gcImage(ctx, p, drv, imgName) // an image copy made for nothing goes
			return nil, err
		}
		imgData := dataPath(p.Path, TypeImage, imgName)
		if kind == TypeVM {
			if err = drv.makeDir(ctx, rootData); err == nil {
				err = qemuImgCreate(ctx, filepath.Join(rootData, fileName(FormatQcow2)), v.Size, backingRef(imgName))
			}
		} else if err = drv.cloneDir(ctx, imgData, rootData, false, nil); err == nil && v.Size > 0 {
			err = drv.setLimit(ctx, rootData, v.Size)
		}
	}
	vol, err := m.commitCreate(ctx, p, drv, v, op, what, err)
	if err != nil && v.Base != "" {
		m.gcImage(ctx, p, drv, v.Base)
	}
	return vol, err
}

func checkKind(kind string) error {
	if kind != TypeContainer && kind != TypeVM {
		return errdefs.Invalid("instance kind %s is not container or vm", quoted(kind))
	}
	return nil
}

// prepareSource runs src's Prepare, if any, and checks what the source then names.
func prepareSource(ctx context.Context, kind string, src *ImageSource) (func(), error) {
	done := func() {}
	if src.Prepare != nil {
		d, err := src.Prepare(ctx, src)
		if err != nil {
			return nil, err
		}
		if d != nil {
			done = d
		}
	}
	if err := checkSource(kind, src); err != nil {
		done()
		return nil, err
	}
	return done, nil
}

func checkSource(kind string, src *ImageSource) error {
	switch kind {
	case TypeContainer:
		if fi, err := os.Stat(src.RootfsDir); src.RootfsDir == "" || err != nil || !fi.IsDir() {
			return errdefs.Invalid("a container root needs the image's rootfs directory (%q: %v)", src.RootfsDir, err)
		}
	case TypeVM:
		if fi, err := os.Stat(src.BaseDisk); src.BaseDisk == "" || err != nil || !fi.Mode().IsRegular() {
			return errdefs.Invalid("a VM root needs the image's disk file (%q: %v)", src.BaseDisk, err)
		}
		if src.BaseFormat == "" {
			src.BaseFormat = "qcow2"
		}
		if src.BaseFormat != "qcow2" && src.BaseFormat != "raw" {
			return errdefs.Invalid("image disk format %q is not qcow2 or raw", src.BaseFormat)
		}
	default:
		return checkKind(kind)
	}
	return nil
}

// rootfsFits refuses an ext4 root too small for the image's files (with room for ext4's own).
func rootfsFits(rootfs string, size uint64, format string) error {
	if format != FormatExt4 {
		return nil
	}
	used, err := treeSize(rootfs)
	if err != nil {
		return err
	}
	if need := uint64(used) + uint64(used)/10 + 8<<20; need > size {
		return errdefs.Invalid("the image's files (%s) do not fit in a %s root disk; give at least %s",
			units.FormatSize(uint64(used)), units.FormatSize(size), units.FormatSize(need))
	}
	return nil
}

// withImage runs fn under the lock of the pool's copy of an image, making the copy first if it is
// missing. Holding the lock while fn writes the user's record is what keeps gcImage from removing
// an image between the check and the clone.
func (m *Manager) withImage(ctx context.Context, p *Pool, drv poolDriver, name, kind string, src ImageSource, fn func(*Volume) error) error {
	unlock, err := m.lockVolume(ctx, p, TypeImage, name)
	if err != nil {
		return err
	}
	defer unlock()
	img, err := m.loadRecord(p, TypeImage, name)
	if err == nil && img.State == StateReady && img.Pending == nil {
		return fn(img)
	}
	if err == nil { // a copy left half made by a crash: nobody else works on it while we hold the lock
		if err := m.purge(ctx, p, drv, img); err != nil {
			return err
		}
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	img, err = m.makeImage(ctx, p, drv, name, kind, src)
	if err != nil {
		return err
	}
	return fn(img)
}

// makeImage makes the pool's copy of an image (the caller holds its lock).
func (m *Manager) makeImage(ctx context.Context, p *Pool, drv poolDriver, name, kind string, src ImageSource) (*Volume, error) {
	done, err := prepareSource(ctx, kind, &src)
	if err != nil {
		return nil, err
	}
	defer done()
	op := m.newOp("create")
	defer m.endOp(op)
	img := &Volume{Name: name, Type: TypeImage, State: StateCreating, Pending: op, CreatedAt: time.Now().UTC()}
	var need int64
	if kind == TypeContainer {
		img.ContentType, img.Format = ContentFilesystem, FormatSubvol
		need, _ = treeSize(src.RootfsDir)
	} else {
		img.ContentType, img.Format = ContentBlock, FormatQcow2
		if fi, err := os.Stat(src.BaseDisk); err == nil {
			need = fi.Size()
		}
	}
	if err := fitsFree(p.Name, uint64(need), freeBytes(p.Path)); err != nil {
		return nil, err
	}
	if err := m.createRecordLocked(p, img); err != nil {
		return nil, err
	}
	what := "copying image " + src.Fingerprint + " into pool " + p.Name
	err = drv.makeDir(ctx, dataPath(p.Path, TypeImage, name))
	if err == nil && img.Format == FormatSubvol {
		err = copyTree(ctx, src.RootfsDir, dataPath(p.Path, TypeImage, name), m.reporterFor(ctx, what, src.RootfsDir))
	} else if err == nil {
		file := filepath.Join(dataPath(p.Path, TypeImage, name), fileName(FormatQcow2))
		if err = qemuImgConvert(ctx, src.BaseDisk, src.BaseFormat, file, what); err == nil {
			var info *imgInfo
			if info, err = qemuImgInfo(ctx, file, "qcow2"); err == nil {
				img.Size = info.VirtualSize
			}
		}
	}
	if err == nil {
		img.State, img.Pending = StateReady, nil
		if err = m.saveRecord(p, img); err == nil {
			return img, nil
		}
	}
	cctx, cancel := bg(ctx)
	defer cancel()
	if cerr := m.purge(cctx, p, drv, img); cerr != nil {
		return nil, fmt.Errorf("%s: %w (roll-back failed: %v; Recover retries)", what, err, cerr)
	}
	return nil, failed(p.Name, what, err)
}

// imageUsers lists the volumes made from an image copy.
func (m *Manager) imageUsers(p *Pool, image string) ([]string, error) {
	recs, err := m.listRecords(p)
	if err != nil {
		return nil, err
	}
	var users []string
	for _, v := range recs {
		if v.Base == image {
			users = append(users, v.Ref())
		}
	}
	return users, nil
}

// gcImage removes a pool's copy of an image once no volume is made from it.
func (m *Manager) gcImage(ctx context.Context, p *Pool, drv poolDriver, image string) error {
	ctx, cancel := bg(ctx)
	defer cancel()
	unlock, err := m.lockVolume(ctx, p, TypeImage, image)
	if err != nil {
		return err
	}
	defer unlock()
	img, err := m.loadRecord(p, TypeImage, image)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			// A copy that failed before its record was written leaves only the lock file we hold.
			return removeIfExists(lockBase(p.Path, TypeImage, image) + ".meta")
		}
		return err
	}
	if users, err := m.imageUsers(p, image); err != nil || len(users) > 0 {
		return err
	}
	return m.purge(ctx, p, drv, img)
}

// createRecordWithBase writes a new record that names a base image, under the image's lock, so
// the image cannot go between the caller's check and the write.
func (m *Manager) createRecordWithBase(ctx context.Context, p *Pool, v *Volume) error {
	if v.Base == "" {
		return m.createRecord(ctx, p, v)
	}
	unlock, err := m.lockVolume(ctx, p, TypeImage, v.Base)
	if err != nil {
		return err
	}
	defer unlock()
	if !exists(recordPath(p.Path, TypeImage, v.Base)) {
		return errdefs.Conflict("the image volume %s that %s is made from was just removed", v.Base, v.Ref())
	}
	return m.createRecord(ctx, p, v)
}

// AdoptInstanceRoot makes an existing root volume (one another host made on a shared pool) the
// root of this host's instance of the same name and kind: the instance is added to its users.
// Running it is still guarded by the lease (Acquire). incoming is a live move's destination:
// the source's guest holds the root until it hands over (on this very machine when both hosts
// run on it), so a holder is no reason to refuse; otherwise one is.
func (m *Manager) AdoptInstanceRoot(ctx context.Context, pool, instance, kind string, incoming bool) (*Volume, error) {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	_, err = m.update(ctx, p, kind, instance, func(v *Volume) error {
		if err := busy(p, v); err != nil {
			return err
		}
		// A second copy must never run from a root a live process on this host holds.
		if why := heldBy(p, v); why != "" && !incoming {
			return errdefs.Conflict("root volume %s cannot be taken: it is %s", v.Ref(), why)
		}
		for _, a := range v.UsedBy {
			if a.Instance != instance {
				return errdefs.Conflict("volume %s is attached to %s: it is no instance root to adopt", v.Ref(), usersOf(v))
			}
		}
		if !slices.ContainsFunc(v.UsedBy, m.isMine(instance)) {
			v.UsedBy = append(v.UsedBy, Attachment{Instance: instance, Host: m.host})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.GetVolume(ctx, pool, kind+"/"+instance)
}

// isMine matches this host's attachments of instance.
func (m *Manager) isMine(instance string) func(Attachment) bool {
	return func(a Attachment) bool { return a.Instance == instance && (a.Host == m.host || a.Host == "") }
}

// DeleteInstanceRoot detaches this host's instance from its root volume and deletes the volume
// unless another host's instance still has it (a root adopted on a shared pool). A missing root is
// not an error, so a half-made instance can always be cleaned up.
func (m *Manager) DeleteInstanceRoot(ctx context.Context, pool, instance, kind string) error {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	var others string
	_, err = m.update(ctx, p, kind, instance, func(v *Volume) error {
		v.UsedBy = slices.DeleteFunc(v.UsedBy, m.isMine(instance))
		others = usersOf(v)
		return nil
	})
	if err == nil && others != "" {
		m.log.Info("keep a root volume another instance uses", "pool", pool, "volume", kind+"/"+instance, "users", others)
		return nil
	}
	if err == nil {
		err = m.DeleteVolume(ctx, pool, kind+"/"+instance)
	}
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	return err
}

// RootInfo is where an instance's root volume is on this host.
type RootInfo struct {
	Path   string // the tree (dir, subvol) or the image file (ext4, qcow2)
	Format string
	Shared bool // the pool is a shared filesystem: other hosts reach the same disk
	Size   uint64
}

// InstanceRoot says where the root volume of an instance is on this host (the path of a shared
// pool's volume differs between hosts that mount it in different places). It reads the record
// only, so it is cheap enough for every start.
func (m *Manager) InstanceRoot(ctx context.Context, pool, instance, kind string) (*RootInfo, error) {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	if err := checkKind(kind); err != nil {
		return nil, err
	}
	v, err := m.loadRecord(p, kind, instance)
	if err != nil {
		return nil, err
	}
	if v.State != StateReady {
		return nil, errdefs.Conflict("volume %s in pool %q is %s", v.Ref(), p.Name, v.State)
	}
	return &RootInfo{Path: filepath.Join(dataPath(p.Path, v.Type, v.Name), fileName(v.Format)), Format: v.Format,
		Shared: p.Driver == DriverShared, Size: v.Size}, nil
}
