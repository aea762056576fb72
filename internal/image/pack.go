package image

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/internal/logctx"

	"golang.org/x/sys/unix"
)

// PackOptions tune PackRootfs.
type PackOptions struct {
	Compression Compression // default zstd
	// SkipContents lists rootfs-relative directories kept empty in the image (dev, proc, sys, run, tmp):
	// the runtime fills them, and a published instance's copies are host state.
	SkipContents []string
	// ModTime, if set, replaces every mtime so that the same tree gives the same fingerprint.
	ModTime time.Time
	// IDBase and IDSize undo a container's id shift: host ids [IDBase, IDBase+IDSize) are written as
	// [0, IDSize). Zero IDSize writes ids as they are.
	IDBase, IDSize uint32
}

// unshift maps a host id back into the image's range.
func (o PackOptions) unshift(id uint32) int {
	if o.IDSize > 0 && id >= o.IDBase && id-o.IDBase < o.IDSize {
		return int(id - o.IDBase)
	}
	return int(id)
}

// DefaultSkipContents are the directories whose contents never belong in an image.
var DefaultSkipContents = []string{"dev", "proc", "sys", "run", "tmp"}

// imageWriter writes an image tarball: metadata.json first, then rootfs/ members or a disk.
type imageWriter struct {
	cw    io.WriteCloser
	tw    *tar.Writer
	mtime time.Time
}

func newImageWriter(w io.Writer, c Compression, meta *Metadata, mtime time.Time) (*imageWriter, error) {
	if err := meta.Validate(); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return nil, err
	}
	cw, err := compressor(w, c)
	if err != nil {
		return nil, err
	}
	iw := &imageWriter{cw: cw, tw: tar.NewWriter(cw), mtime: mtime}
	if iw.mtime.IsZero() {
		iw.mtime = time.Now()
	}
	data = append(data, '\n')
	if err := iw.write(&tar.Header{Name: MetadataFile, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))}, data); err != nil {
		return nil, err
	}
	return iw, nil
}

func (iw *imageWriter) write(hdr *tar.Header, data []byte) error {
	if hdr.ModTime.IsZero() {
		hdr.ModTime = iw.mtime
	}
	if err := iw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", hdr.Name, err)
	}
	if len(data) > 0 {
		if _, err := iw.tw.Write(data); err != nil {
			return fmt.Errorf("write %s: %w", hdr.Name, err)
		}
	}
	return nil
}

// rootfsName is the member name of a rootfs-relative path ("" is the rootfs itself).
func rootfsName(rel string, dir bool) string {
	name := "rootfs"
	if rel != "" && rel != "." {
		name += "/" + rel
	}
	if dir {
		name += "/"
	}
	return name
}

func (iw *imageWriter) dir(rel string, mode int64) error {
	return iw.write(&tar.Header{Name: rootfsName(rel, true), Typeflag: tar.TypeDir, Mode: mode}, nil)
}

func (iw *imageWriter) file(rel string, mode int64, data []byte) error {
	return iw.write(&tar.Header{Name: rootfsName(rel, false), Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(data))}, data)
}

func (iw *imageWriter) symlink(rel, target string) error {
	return iw.write(&tar.Header{Name: rootfsName(rel, false), Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}, nil)
}

// Close ends the tar and the compressed stream; it does not close the underlying writer.
func (iw *imageWriter) Close() error {
	if err := iw.tw.Close(); err != nil {
		return err
	}
	return iw.cw.Close()
}

// PackRootfs writes a unified image tarball of dir (a root filesystem) with meta to w. It keeps
// ownership, modes, hardlinks, fifos and file capabilities; it skips device nodes and sockets, and
// does not descend into other filesystems mounted below dir (like tar --one-file-system).
func PackRootfs(ctx context.Context, w io.Writer, dir string, meta *Metadata, opts PackOptions) error {
	iw, err := newImageWriter(w, opts.Compression, meta, opts.ModTime)
	if err != nil {
		return err
	}
	var rootDev uint64
	if fi, err := os.Lstat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	} else {
		rootDev = uint64(fi.Sys().(*syscall.Stat_t).Dev)
	}
	skip := map[string]bool{}
	for _, s := range opts.SkipContents {
		skip[filepath.Clean(s)] = true
	}
	links := map[[2]uint64]string{}
	skipped := 0
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			rel = ""
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		hdr := &tar.Header{
			Name: rootfsName(rel, d.IsDir()), Mode: int64(st.Mode & 0o7777),
			Uid: opts.unshift(st.Uid), Gid: opts.unshift(st.Gid), ModTime: fi.ModTime().Truncate(time.Second),
		}
		if !opts.ModTime.IsZero() {
			hdr.ModTime = opts.ModTime
		}
		switch fi.Mode().Type() {
		case fs.ModeDir:
			hdr.Typeflag = tar.TypeDir
			addXattrs(p, hdr)
			if err := iw.write(hdr, nil); err != nil {
				return err
			}
			if rel != "" && (skip[rel] || uint64(st.Dev) != rootDev) {
				return fs.SkipDir
			}
			return nil
		case fs.ModeSymlink:
			hdr.Typeflag = tar.TypeSymlink
			if hdr.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
			return iw.write(hdr, nil)
		case fs.ModeNamedPipe:
			hdr.Typeflag = tar.TypeFifo
			return iw.write(hdr, nil)
		case 0:
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				return iw.write(hdr, nil)
			}
			if st.Nlink > 1 {
				links[key] = hdr.Name
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
			addXattrs(p, hdr)
			return iw.copyFile(p, hdr)
		}
		skipped++ // devices and sockets: the runtime creates what it needs
		return nil
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	if skipped > 0 {
		logctx.From(ctx).Debug("image: skipped device nodes and sockets while packing", "dir", dir, "count", skipped)
	}
	return iw.Close()
}

func (iw *imageWriter) copyFile(p string, hdr *tar.Header) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := iw.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", hdr.Name, err)
	}
	if n, err := io.CopyN(iw.tw, f, hdr.Size); err != nil {
		return fmt.Errorf("%s changed while packing (%d of %d bytes): %w", p, n, hdr.Size, err)
	}
	return nil
}

// addXattrs records the xattrs Unpack restores (file capabilities, user.*).
func addXattrs(p string, hdr *tar.Header) {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return
	}
	for name := range strings.SplitSeq(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !keptXattr(name) {
			continue
		}
		val := make([]byte, 4096)
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			continue
		}
		if hdr.PAXRecords == nil {
			hdr.PAXRecords = map[string]string{}
		}
		hdr.PAXRecords["SCHILY.xattr."+name] = string(val[:m])
		hdr.Format = tar.FormatPAX
	}
}
