package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"tandem/internal/errdefs"
)

// Compression of an image file, detected from its magic bytes.
type Compression string

const (
	CompressionNone Compression = "none"
	CompressionGzip Compression = "gzip"
	CompressionZstd Compression = "zstd"
)

// Format of an image: a unified rootfs tarball or a VM disk.
type Format string

const (
	FormatUnified Format = "unified"
	FormatDisk    Format = "disk"
)

// Disk formats inside a disk image.
const (
	DiskQcow2 = "qcow2"
	DiskRaw   = "raw"
)

var (
	magicGzip  = []byte{0x1f, 0x8b}
	magicZstd  = []byte{0x28, 0xb5, 0x2f, 0xfd}
	magicXz    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	magicBzip2 = []byte("BZh")
	magicQcow2 = []byte("QFI\xfb")
)

// fileExt is the extension a stored image file gets, for people listing the store.
func (c Compression) fileExt() string {
	switch c {
	case CompressionGzip:
		return ".tar.gz"
	case CompressionZstd:
		return ".tar.zst"
	}
	return ".tar"
}

// detectCompression peeks at the first bytes. Anything that is neither gzip nor zstd must be a plain
// tar (the "ustar" magic at offset 257); xz and bzip2 get a specific error rather than "not a tar".
func detectCompression(br *bufio.Reader) (Compression, error) {
	head, _ := br.Peek(512)
	switch {
	case bytes.HasPrefix(head, magicGzip):
		return CompressionGzip, nil
	case bytes.HasPrefix(head, magicZstd):
		return CompressionZstd, nil
	case bytes.HasPrefix(head, magicXz):
		return "", errdefs.Invalid("xz-compressed images are not supported: use zstd or gzip")
	case bytes.HasPrefix(head, magicBzip2):
		return "", errdefs.Invalid("bzip2-compressed images are not supported: use zstd or gzip")
	case len(head) >= 262 && bytes.Equal(head[257:262], []byte("ustar")):
		return CompressionNone, nil
	case len(head) == 0:
		return "", errdefs.Invalid("image file is empty")
	}
	return "", errdefs.Invalid("not an image: neither a tar archive nor zstd or gzip compressed")
}

// decompressor wraps the raw image stream. Close releases decoder resources; it does not close r.
type decompressor struct {
	io.Reader
	kind  Compression
	close func()
}

func (d *decompressor) Close() {
	if d.close != nil {
		d.close()
	}
}

// openDecompressor detects the compression of r and returns a reader of the tar stream.
func openDecompressor(r io.Reader) (*decompressor, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	kind, err := detectCompression(br)
	if err != nil {
		return nil, err
	}
	switch kind {
	case CompressionGzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, errdefs.Invalid("corrupt gzip stream: %v", err)
		}
		// One member only: concatenated gzip members are legal but have no use here.
		zr.Multistream(false)
		return &decompressor{Reader: zr, kind: kind}, nil
	case CompressionZstd:
		// Bound the decoder window so a hostile frame header cannot make us allocate gigabytes.
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(128<<20), zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, errdefs.Invalid("corrupt zstd stream: %v", err)
		}
		return &decompressor{Reader: zr, kind: kind, close: zr.Close}, nil
	}
	return &decompressor{Reader: br, kind: kind}, nil
}

// compressor returns a writer compressing into w; Close flushes it (and does not close w).
func compressor(w io.Writer, c Compression) (io.WriteCloser, error) {
	switch c {
	case CompressionGzip:
		return gzip.NewWriterLevel(w, gzip.DefaultCompression)
	case CompressionZstd, "":
		// One goroutine: the output is then a pure function of the input, so builds are reproducible.
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	case CompressionNone:
		return nopWriteCloser{w}, nil
	}
	return nil, errdefs.Invalid("unknown compression %q", c)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// checkQcow2Header rejects anything but a self-contained qcow2: a backing file or an external data
// file would make QEMU open a host path named by the image.
func checkQcow2Header(h []byte) error {
	if len(h) < 72 || !bytes.HasPrefix(h, magicQcow2) {
		return fmt.Errorf("not a qcow2 file (no QFI\\xfb magic)")
	}
	version := binary.BigEndian.Uint32(h[4:8])
	if version != 2 && version != 3 {
		return fmt.Errorf("unsupported qcow2 version %d", version)
	}
	if off := binary.BigEndian.Uint64(h[8:16]); off != 0 {
		return fmt.Errorf("qcow2 names a backing file; a disk image must be self-contained")
	}
	if crypt := binary.BigEndian.Uint32(h[32:36]); crypt != 0 {
		return fmt.Errorf("encrypted qcow2 is not supported")
	}
	if version == 3 {
		if len(h) < 80 {
			return fmt.Errorf("qcow2 v3 header is truncated")
		}
		const externalDataFile = 1 << 2
		if inc := binary.BigEndian.Uint64(h[72:80]); inc&externalDataFile != 0 {
			return fmt.Errorf("qcow2 uses an external data file; a disk image must be self-contained")
		}
	}
	return nil
}
