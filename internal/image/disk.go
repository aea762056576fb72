package image

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/hostexec"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// RootDisk is a disk made by BuildRootDisk.
type RootDisk struct {
	Path   string
	Format string // "qcow2", or "raw" when qemu-img is not installed
	Size   int64  // virtual size in bytes
}

// BuildRootDisk makes an ext4 filesystem holding rootfsDir without mounting anything (mkfs.ext4 -d
// copies the tree, ownership included), then converts it to qcow2 for use as a base image. With
// sizeBytes 0 the size is the tree's size plus headroom. Without qemu-img the disk stays raw and is
// written next to out with a .raw extension; the result says which.
func BuildRootDisk(ctx context.Context, rootfsDir, out string, sizeBytes int64) (*RootDisk, error) {
	mkfs, err := hostexec.Look("mkfs.ext4")
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(rootfsDir); err != nil || !fi.IsDir() {
		return nil, errdefs.Invalid("rootfs %s is not a directory", rootfsDir)
	}
	if sizeBytes == 0 {
		if sizeBytes, err = autoDiskSize(rootfsDir); err != nil {
			return nil, err
		}
	}
	sizeBytes = (sizeBytes + 1<<20 - 1) &^ (1<<20 - 1)
	raw := out + ".ext4.partial"
	defer os.Remove(raw)
	f, err := os.OpenFile(raw, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(sizeBytes)
	f.Close()
	if err != nil {
		return nil, err
	}
	progress.Report(ctx, 10, "making ext4 filesystem")
	// -m 0: no blocks reserved for root on a single-purpose root disk.
	if err := hostexec.Command(mkfs, "-q", "-F", "-t", "ext4", "-m", "0", "-L", "rootfs",
		"-E", "root_owner=0:0", "-d", rootfsDir, raw).Run(ctx); err != nil {
		return nil, err
	}
	disk := &RootDisk{Path: out, Format: DiskQcow2, Size: sizeBytes}
	qemuImg, qerr := hostexec.Look("qemu-img")
	if qerr != nil {
		disk.Format, disk.Path = DiskRaw, strings.TrimSuffix(out, ".qcow2")+".raw"
		logctx.From(ctx).Warn("image: qemu-img not found, keeping the root disk raw", "path", disk.Path)
		if err := os.Rename(raw, disk.Path); err != nil {
			return nil, err
		}
	} else {
		progress.Report(ctx, 70, "converting to qcow2")
		tmp := out + ".partial"
		defer os.Remove(tmp)
		if err := hostexec.Command(qemuImg, "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp).Run(ctx); err != nil {
			return nil, err
		}
		if err := syncFile(tmp); err != nil {
			return nil, err
		}
		if err := os.Rename(tmp, out); err != nil {
			return nil, err
		}
	}
	progress.Report(ctx, 100, "root disk ready")
	return disk, fsutil.SyncDir(filepath.Dir(disk.Path))
}

// autoDiskSize is the tree's allocated size plus a quarter and 256 MiB: room for the journal,
// inode tables and a little use.
func autoDiskSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		total += (fi.Size()+4095)&^4095 + 256 // blocks plus an inode's share
		return nil
	})
	if err != nil {
		return 0, err
	}
	return total + total/4 + 256<<20, nil
}

// writeSparse copies size bytes from r into a new file, seeking over all-zero blocks so a raw disk
// takes only the space its data needs.
func writeSparse(path string, r io.Reader, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			chunk := buf[:n]
			if isZero(chunk) {
				if _, err := f.Seek(int64(n), io.SeekCurrent); err != nil {
					return err
				}
			} else if _, err := f.Write(chunk); err != nil {
				return err
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if off != size {
		return io.ErrUnexpectedEOF
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	return f.Sync()
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
