package image

import (
	"archive/tar"
	"bytes"
	"io"
	"os"

	"tandem/internal/errdefs"
)

// PackDisk writes a disk image tarball to w: meta, which must say types ["vm"] and a firmware, and
// the disk at path as disk.qcow2 or disk.raw, told apart by its first bytes. The disk is streamed
// from the file; opts.Compression and opts.ModTime apply, the rest of opts is for rootfs trees.
func PackDisk(w io.Writer, path string, meta *Metadata, opts PackOptions) error {
	if err := meta.Validate(); err != nil {
		return err
	}
	if err := meta.validateFor(FormatDisk); err != nil {
		return err
	}
	format, size, err := sniffDisk(path)
	if err != nil {
		return err
	}
	iw, err := newImageWriter(w, opts.Compression, meta, opts.ModTime)
	if err != nil {
		return err
	}
	hdr := &tar.Header{Name: "disk." + format, Typeflag: tar.TypeReg, Mode: 0o644, Size: size, ModTime: iw.mtime}
	if err := iw.copyFile(path, hdr); err != nil {
		return err
	}
	return iw.Close()
}

// sniffDisk says whether a disk file is qcow2 (checked as import will check it) or raw.
func sniffDisk(path string) (format string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	if bytes.HasPrefix(head[:n], magicQcow2) {
		if err := checkQcow2Header(head[:n]); err != nil {
			return "", 0, errdefs.Invalid("%s: %v", path, err)
		}
		return DiskQcow2, fi.Size(), nil
	}
	if fi.Size() == 0 || fi.Size()%512 != 0 {
		return "", 0, errdefs.Invalid("%s: raw disk size %d is not a positive multiple of 512", path, fi.Size())
	}
	return DiskRaw, fi.Size(), nil
}
