package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"tandem/internal/errdefs"
)

// Limits that bound what an archive may make us read or create.
const (
	// DefaultMaxBytes caps the uncompressed content of an image (a decompression bomb bound).
	DefaultMaxBytes int64 = 32 << 30
	// DefaultMaxEntries caps the number of members (an inode bomb bound).
	DefaultMaxEntries = 2_000_000
	maxPathLen        = 4096
	maxComponentLen   = 255
)

// Limits bounds an archive walk.
type Limits struct {
	MaxBytes     int64 // uncompressed member content; 0 means DefaultMaxBytes
	MaxEntries   int   // 0 means DefaultMaxEntries
	AllowDevices bool  // accept char/block device members (rejected by default)
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	return l
}

// entryKind is what the walk remembers about each rootfs path, to judge later members.
type entryKind uint8

const (
	kindNone entryKind = iota
	kindDir
	kindFile
	kindSymlink
	kindOther // fifo, device
)

// member is one rootfs member: rel is its path inside the rootfs ("" is the rootfs itself).
type member struct {
	hdr     *tar.Header
	rel     string
	linkRel string // hardlinks: the target's path inside the rootfs
}

// walkResult is what a whole archive said about itself.
type walkResult struct {
	format       Format
	compression  Compression
	meta         *Metadata
	diskFormat   string
	unpackedSize int64
	entries      int
}

// walkHandlers receive members; a nil handler means "validate only".
type walkHandlers struct {
	rootfs func(m *member, content io.Reader) error
	disk   func(format string, size int64, content io.Reader) error
}

type walker struct {
	limits Limits
	seen   map[string]entryKind
	last   string // the last member name, for errors
	res    walkResult
	metaOK bool
}

func memberErr(name string, format string, args ...any) error {
	return errdefs.Invalid("member %q: "+format, append([]any{shortName(name)}, args...)...)
}

// shortName keeps error messages readable when a hostile name is kilobytes long.
func shortName(name string) string {
	if len(name) > 120 {
		return name[:60] + "..." + name[len(name)-40:]
	}
	return name
}

// walkArchive reads a (possibly compressed) image archive, validating every member, and hands rootfs
// and disk members to h. It reads the compressed stream to its end so that gzip CRCs and zstd
// checksums are verified even when the tar ends early.
func walkArchive(ctx context.Context, r io.Reader, limits Limits, h walkHandlers) (*walkResult, error) {
	dec, err := openDecompressor(r)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	w := &walker{limits: limits.withDefaults(), seen: map[string]entryKind{}}
	w.res.compression = dec.kind
	tr := tar.NewReader(dec)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, corruptAfter(w.last, err)
		}
		w.last = hdr.Name
		if err := w.member(hdr, tr, h); err != nil {
			return nil, err
		}
	}
	// Drain what follows the tar trailer (padding) so the decompressor verifies its checksum.
	if _, err := io.Copy(io.Discard, io.LimitReader(dec, 64<<20)); err != nil {
		return nil, corruptAfter(w.last, fmt.Errorf("after the end of the tar: %w", err))
	}
	return w.finish()
}

// corruptAfter turns a read error into a clear "truncated" or "corrupt" one naming the last
// member read (the reader was skipping its content or looking for the next header).
func corruptAfter(last string, err error) error {
	if errors.Is(err, errdefs.ErrInvalidArgument) {
		return err
	}
	where := "before its first member"
	if last != "" {
		where = fmt.Sprintf("after member %q", shortName(last))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errdefs.Invalid("archive is truncated %s: %v", where, err)
	}
	return errdefs.Invalid("archive is corrupt %s: %v", where, err)
}

func (w *walker) member(hdr *tar.Header, tr io.Reader, h walkHandlers) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	w.res.entries++
	if w.res.entries > w.limits.MaxEntries {
		return memberErr(hdr.Name, "the archive has more than %d members", w.limits.MaxEntries)
	}
	name, err := cleanMemberName(hdr.Name)
	if err != nil {
		return memberErr(hdr.Name, "%v", err)
	}
	if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeGNUSparse {
		if hdr.Size < 0 || hdr.Size > w.limits.MaxBytes-w.res.unpackedSize {
			return memberErr(hdr.Name, "content exceeds the size limit of %d bytes", w.limits.MaxBytes)
		}
		w.res.unpackedSize += hdr.Size
	}
	switch {
	case name == "":
		if hdr.Typeflag != tar.TypeDir {
			return memberErr(hdr.Name, "the archive root must be a directory")
		}
		return nil
	case name == MetadataFile:
		return w.metadata(hdr, tr)
	case name == "rootfs" || strings.HasPrefix(name, "rootfs/"):
		return w.rootfs(hdr, strings.TrimPrefix(strings.TrimPrefix(name, "rootfs"), "/"), tr, h)
	case name == "disk.qcow2" || name == "disk.raw":
		return w.disk(hdr, strings.TrimPrefix(name, "disk."), tr, h)
	}
	return memberErr(hdr.Name, "unexpected member (allowed: %s, rootfs/, disk.qcow2, disk.raw)", MetadataFile)
}

// cleanMemberName drops "./" and empty components and rejects absolute names, "..", over-long names.
func cleanMemberName(name string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("empty name")
	}
	if len(name) > maxPathLen {
		return "", fmt.Errorf("name is longer than %d bytes", maxPathLen)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("absolute path")
	}
	parts := strings.Split(name, "/")
	out := parts[:0]
	for _, p := range parts {
		switch {
		case p == "" || p == ".":
			continue
		case p == "..":
			return "", fmt.Errorf("path contains a '..' component")
		case len(p) > maxComponentLen:
			return "", fmt.Errorf("path component is longer than %d bytes", maxComponentLen)
		}
		out = append(out, p)
	}
	return strings.Join(out, "/"), nil
}

func (w *walker) metadata(hdr *tar.Header, tr io.Reader) error {
	if hdr.Typeflag != tar.TypeReg {
		return memberErr(hdr.Name, "must be a regular file")
	}
	if w.metaOK {
		return memberErr(hdr.Name, "appears twice")
	}
	if hdr.Size > maxMetadataSize {
		return memberErr(hdr.Name, "is larger than %d bytes", maxMetadataSize)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return corruptAfter(hdr.Name, err)
	}
	m, err := ParseMetadata(data)
	if err != nil {
		return err
	}
	w.res.meta, w.metaOK = m, true
	return nil
}

func (w *walker) disk(hdr *tar.Header, format string, tr io.Reader, h walkHandlers) error {
	if hdr.Typeflag != tar.TypeReg {
		return memberErr(hdr.Name, "must be a regular file")
	}
	if w.res.diskFormat != "" {
		return memberErr(hdr.Name, "the archive has more than one disk")
	}
	if w.res.format == FormatUnified {
		return memberErr(hdr.Name, "the archive has both rootfs/ and a disk")
	}
	w.res.format, w.res.diskFormat = FormatDisk, format
	head := make([]byte, 512)
	n, err := io.ReadFull(tr, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return corruptAfter(hdr.Name, err)
	}
	head = head[:n]
	if int64(n) < min(hdr.Size, 512) {
		return errdefs.Invalid("archive is truncated in member %q", shortName(hdr.Name))
	}
	if format == DiskQcow2 {
		if err := checkQcow2Header(head); err != nil {
			return memberErr(hdr.Name, "%v", err)
		}
	} else if bytes.HasPrefix(head, magicQcow2) {
		return memberErr(hdr.Name, "is a qcow2 file: name it disk.qcow2")
	} else if hdr.Size == 0 || hdr.Size%512 != 0 {
		return memberErr(hdr.Name, "raw disk size %d is not a positive multiple of 512", hdr.Size)
	}
	if h.disk == nil {
		return nil
	}
	return handlerErr(hdr.Name, h.disk(format, hdr.Size, io.MultiReader(bytes.NewReader(head), &archiveReader{tr})))
}

func (w *walker) rootfs(hdr *tar.Header, rel string, tr io.Reader, h walkHandlers) error {
	if w.res.format == FormatDisk {
		return memberErr(hdr.Name, "the archive has both rootfs/ and a disk")
	}
	w.res.format = FormatUnified
	m := &member{hdr: hdr, rel: rel}
	kind, err := w.checkRootfs(m)
	if err != nil {
		return err
	}
	w.seen[rel] = kind
	if h.rootfs == nil {
		return nil
	}
	return handlerErr(hdr.Name, h.rootfs(m, &archiveReader{tr}))
}

// archiveReader marks errors that come from reading the archive, so that a corrupt stream is told
// apart from a failure to write (a full disk) in what a handler returns.
type archiveReader struct{ r io.Reader }

type archiveReadError struct{ err error }

func (e *archiveReadError) Error() string { return e.err.Error() }
func (e *archiveReadError) Unwrap() error { return e.err }

func (a *archiveReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err != nil && err != io.EOF {
		err = &archiveReadError{err}
	}
	return n, err
}

func handlerErr(name string, err error) error {
	var rerr *archiveReadError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &rerr):
		if errors.Is(rerr.err, io.ErrUnexpectedEOF) {
			return errdefs.Invalid("archive is truncated in member %q", shortName(name))
		}
		return errdefs.Invalid("archive is corrupt in member %q: %v", shortName(name), rerr.err)
	case errors.Is(err, errdefs.ErrInvalidArgument), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("member %q: %w", name, err)
}

// checkRootfs applies the rules that make extraction safe; it returns the kind the member creates.
func (w *walker) checkRootfs(m *member) (entryKind, error) {
	hdr, rel := m.hdr, m.rel
	// No parent may be something other than a directory: writing through a symlink is how an
	// archive escapes its root, and we never follow one.
	if rel != "" {
		if k := w.seen[""]; k != kindNone && k != kindDir {
			return 0, memberErr(hdr.Name, "rootfs/ is not a directory")
		}
		for i := 0; i < len(rel); i++ {
			if rel[i] != '/' {
				continue
			}
			switch w.seen[rel[:i]] {
			case kindSymlink:
				return 0, memberErr(hdr.Name, "parent %q is a symlink: refusing to write through it", "rootfs/"+rel[:i])
			case kindFile, kindOther:
				return 0, memberErr(hdr.Name, "parent %q is not a directory", "rootfs/"+rel[:i])
			}
		}
	}
	var kind entryKind
	switch hdr.Typeflag {
	case tar.TypeDir:
		kind = kindDir
	case tar.TypeReg, tar.TypeGNUSparse: // tar.Reader reads the legacy TypeRegA as TypeReg
		kind = kindFile
	case tar.TypeSymlink:
		kind = kindSymlink
		if hdr.Linkname == "" || len(hdr.Linkname) > maxPathLen {
			return 0, memberErr(hdr.Name, "symlink target is empty or longer than %d bytes", maxPathLen)
		}
		if symlinkEscapes(rel, hdr.Linkname) {
			return 0, memberErr(hdr.Name, "symlink target %q points outside the rootfs", hdr.Linkname)
		}
	case tar.TypeLink:
		kind = kindFile
		target, err := cleanMemberName(hdr.Linkname)
		if err != nil {
			return 0, memberErr(hdr.Name, "hardlink target %q: %v", hdr.Linkname, err)
		}
		if !strings.HasPrefix(target, "rootfs/") {
			return 0, memberErr(hdr.Name, "hardlink target %q is outside the rootfs", hdr.Linkname)
		}
		m.linkRel = strings.TrimPrefix(target, "rootfs/")
		switch w.seen[m.linkRel] {
		case kindNone:
			return 0, memberErr(hdr.Name, "hardlink target %q is not an earlier member of the archive", hdr.Linkname)
		case kindDir:
			return 0, memberErr(hdr.Name, "hardlink target %q is a directory", hdr.Linkname)
		}
		if m.linkRel == rel {
			return 0, memberErr(hdr.Name, "hardlink to itself")
		}
	case tar.TypeFifo:
		kind = kindOther
	case tar.TypeChar, tar.TypeBlock:
		if !w.limits.AllowDevices {
			return 0, memberErr(hdr.Name, "device nodes are not allowed in images (the runtime populates /dev)")
		}
		kind = kindOther
	default:
		return 0, memberErr(hdr.Name, "unsupported tar entry type %q", hdr.Typeflag)
	}
	if rel == "" && kind != kindDir {
		return 0, memberErr(hdr.Name, "rootfs/ must be a directory")
	}
	if w.seen[rel] == kindDir && kind != kindDir {
		return 0, memberErr(hdr.Name, "would replace a directory")
	}
	return kind, nil
}

// symlinkEscapes says whether a relative target climbs above the rootfs root when resolved
// lexically from the link's directory. Absolute targets resolve inside the rootfs when it is a root.
func symlinkEscapes(rel, target string) bool {
	if path.IsAbs(target) {
		return false
	}
	depth := 0
	if dir := path.Dir(rel); dir != "." {
		depth = strings.Count(dir, "/") + 1
	}
	for _, p := range strings.Split(target, "/") {
		switch p {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

func (w *walker) finish() (*walkResult, error) {
	if !w.metaOK {
		return nil, errdefs.Invalid("archive has no %s", MetadataFile)
	}
	switch w.res.format {
	case "":
		return nil, errdefs.Invalid("archive has neither rootfs/ nor disk.qcow2 or disk.raw")
	}
	if err := w.res.meta.validateFor(w.res.format); err != nil {
		return nil, err
	}
	return &w.res, nil
}
