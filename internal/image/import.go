package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// DefaultMaxImageSize caps the size of an image file being imported.
const DefaultMaxImageSize int64 = 32 << 30

// ImportOptions tune an import.
type ImportOptions struct {
	// Aliases to point at the new image; an alias that already exists fails the import.
	Aliases []string
	// SHA256, if set, is the expected fingerprint: a mismatch fails the import.
	SHA256 string
	// MaxSize caps the image file (0: DefaultMaxImageSize); Limits cap its content.
	MaxSize int64
	Limits
}

// Import reads an image file from r, validates every member, and stores it. Nothing is left in the
// store on error. An image that is already stored is errdefs.Exists.
func (s *Store) Import(ctx context.Context, r io.Reader, opts ImportOptions) (*Image, error) {
	return s.importReader(ctx, r, -1, opts)
}

// ImportFile imports the image file at path.
func (s *Store) ImportFile(ctx context.Context, path string, opts ImportOptions) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errdefs.NotFound("image file %s not found", path)
		}
		return nil, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	return s.importReader(ctx, f, size, opts)
}

// ImportURL downloads an image over http(s) and imports it. The sha256 is mandatory: an image from
// the network is only trusted when it is the one the caller asked for.
func (s *Store) ImportURL(ctx context.Context, rawURL, sha string, opts ImportOptions) (*Image, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errdefs.Invalid("image URL %q must be an http or https URL", rawURL)
	}
	sha = strings.ToLower(strings.TrimSpace(sha))
	if !isFingerprint(sha) {
		return nil, errdefs.Invalid("importing from a URL needs the image's sha256 (64 hex digits), got %q", sha)
	}
	opts.SHA256 = sha
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, errdefs.Invalid("image URL %q: %v", rawURL, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, errdefs.NotFound("download %s: %s", u.Redacted(), resp.Status)
	case resp.StatusCode != http.StatusOK:
		return nil, errdefs.Unavailable("download %s: %s", u.Redacted(), resp.Status)
	}
	return s.importReader(ctx, resp.Body, resp.ContentLength, opts)
}

func (s *Store) importReader(ctx context.Context, r io.Reader, size int64, opts ImportOptions) (*Image, error) {
	for _, a := range opts.Aliases {
		if err := ValidateAlias(a); err != nil {
			return nil, err
		}
	}
	if opts.SHA256 != "" && !isFingerprint(strings.ToLower(opts.SHA256)) {
		return nil, errdefs.Invalid("expected sha256 %q is not 64 hex digits", opts.SHA256)
	}
	maxSize := opts.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxImageSize
	}
	if size > maxSize {
		return nil, errdefs.Invalid("image file is %d bytes, more than the limit of %d", size, maxSize)
	}
	stage, err := os.MkdirTemp(filepath.Join(s.root, tmpDir), "import-")
	if err != nil {
		return nil, err
	}
	// After a successful commit stage has been renamed away and this removes nothing.
	defer os.RemoveAll(stage)

	progress.Report(ctx, 0, "receiving image")
	staged := filepath.Join(stage, "image.partial")
	fp, n, err := copyHashed(ctx, staged, r, size, maxSize)
	if err != nil {
		return nil, err
	}
	if opts.SHA256 != "" && !strings.EqualFold(opts.SHA256, fp) {
		return nil, errdefs.Invalid("checksum mismatch: expected sha256 %s, got %s", strings.ToLower(opts.SHA256), fp)
	}
	if s.exists(fp) {
		return nil, errdefs.Exists("image %s already exists", fp)
	}

	progress.Report(ctx, 50, "validating image")
	f, err := os.Open(staged)
	if err != nil {
		return nil, err
	}
	res, err := walkArchive(ctx, &progressReader{r: f, ctx: ctx, total: n, base: 50, span: 45, msg: "validating image"}, opts.Limits, walkHandlers{})
	f.Close()
	if err != nil {
		return nil, err
	}
	img := &Image{
		Fingerprint: fp, Format: res.format, Compression: res.compression, DiskFormat: res.diskFormat,
		Size: n, ContentSize: res.unpackedSize, ImportedAt: time.Now().UTC(), Metadata: *res.meta,
	}
	img.Filename = "image" + img.Compression.fileExt()
	if err := os.Rename(staged, filepath.Join(stage, img.Filename)); err != nil {
		return nil, err
	}
	if err := writeJSONAtomic(filepath.Join(stage, recordFile), img); err != nil {
		return nil, err
	}
	if err := s.commit(stage, img, opts.Aliases); err != nil {
		return nil, err
	}
	progress.Report(ctx, 100, "image imported")
	logctx.From(ctx).Info("image: imported", "fingerprint", fp, "os", img.Metadata.OS, "release", img.Metadata.Release, "format", img.Format)
	return s.Get(fp)
}

func (s *Store) exists(fp string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.images[fp]
	return ok
}

// commit moves a complete staging directory into images/ and records the aliases.
func (s *Store) commit(stage string, img *Image, aliases []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.images[img.Fingerprint]; ok {
		return errdefs.Exists("image %s already exists", img.Fingerprint)
	}
	next := maps2(s.aliases, func(string, string) bool { return true })
	for _, a := range aliases {
		if cur, ok := next[a]; ok {
			return errdefs.Exists("alias %q already exists (image %s)", a, cur[:MinPrefix])
		}
		next[a] = img.Fingerprint
	}
	dst := s.imageDir(img.Fingerprint)
	if err := fsutil.SyncDir(stage); err != nil {
		return err
	}
	if err := os.Rename(stage, dst); err != nil {
		return err
	}
	if err := fsutil.SyncDir(filepath.Join(s.root, imagesDir)); err != nil {
		return err
	}
	rec := *img
	s.images[img.Fingerprint] = &rec
	if len(aliases) > 0 {
		if err := writeJSONAtomic(filepath.Join(s.root, aliasesFile), next); err != nil {
			// The image is in; only its aliases are missing. Say so rather than undo the import.
			return fmt.Errorf("image %s imported but its aliases were not saved: %w", img.Fingerprint, err)
		}
		s.aliases = next
	}
	return nil
}

// copyHashed copies r into a new file at path, hashing as it goes, bounded by maxSize; the file is
// fsynced before returning.
func copyHashed(ctx context.Context, path string, r io.Reader, size, maxSize int64) (string, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	pr := &progressReader{r: io.LimitReader(r, maxSize+1), ctx: ctx, total: size, span: 50, msg: "receiving image"}
	n, err := io.Copy(io.MultiWriter(f, h), pr)
	if err != nil {
		return "", 0, fmt.Errorf("receive image: %w", err)
	}
	if n > maxSize {
		return "", 0, errdefs.Invalid("image file is larger than the limit of %d bytes", maxSize)
	}
	if size >= 0 && n != size {
		return "", 0, errdefs.Invalid("image file is truncated: got %d of %d bytes", n, size)
	}
	if err := f.Sync(); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// progressReader reports progress as base + span*done/total, and stops on a cancelled context.
type progressReader struct {
	r           io.Reader
	ctx         context.Context
	total, done int64
	base, span  int
	last        int
	msg         string
}

func (p *progressReader) Read(b []byte) (int, error) {
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.r.Read(b)
	p.done += int64(n)
	if p.total > 0 {
		pct := p.base + int(int64(p.span)*min(p.done, p.total)/p.total)
		if pct != p.last {
			p.last = pct
			progress.Report(p.ctx, pct, p.msg)
		}
	}
	return n, err
}

// Export writes the image file exactly as imported, so its sha256 is the fingerprint.
func (s *Store) Export(ctx context.Context, ref string, w io.Writer) error {
	f, img, err := s.openFile(ref)
	if err != nil {
		return err
	}
	defer f.Close()
	pr := &progressReader{r: f, ctx: ctx, total: img.Size, span: 100, msg: "exporting image"}
	if _, err := io.Copy(w, pr); err != nil {
		return fmt.Errorf("export image %s: %w", img.Fingerprint, err)
	}
	return nil
}

// UnpackRootfs extracts the rootfs of a unified image into target (see Unpack).
func (s *Store) UnpackRootfs(ctx context.Context, ref, target string, opts UnpackOptions) error {
	f, img, err := s.openFile(ref)
	if err != nil {
		return err
	}
	defer f.Close()
	if img.Format != FormatUnified {
		return errdefs.Invalid("image %s is a VM disk image and has no rootfs", img.Fingerprint[:MinPrefix])
	}
	pr := &progressReader{r: f, ctx: ctx, total: img.Size, span: 100, msg: "unpacking image"}
	return Unpack(ctx, pr, target, opts)
}

// ExtractDisk writes the disk of a disk image to out (sparse, via a temporary file renamed into
// place) and returns its format, "qcow2" or "raw".
func (s *Store) ExtractDisk(ctx context.Context, ref, out string) (string, error) {
	f, img, err := s.openFile(ref)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if img.Format != FormatDisk {
		return "", errdefs.Invalid("image %s has no disk: build one from its rootfs with BuildRootDisk", img.Fingerprint[:MinPrefix])
	}
	// Callers serialise extractions to one out: what is at tmp is a crashed one's leftover.
	tmp := out + ".partial"
	os.Remove(tmp)
	defer os.Remove(tmp)
	pr := &progressReader{r: f, ctx: ctx, total: img.Size, span: 100, msg: "extracting disk"}
	_, err = walkArchive(ctx, pr, Limits{}, walkHandlers{disk: func(_ string, size int64, r io.Reader) error {
		return writeSparse(tmp, r, size)
	}})
	if err != nil {
		return "", err
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return img.DiskFormat, fsutil.SyncDir(filepath.Dir(out))
}
