package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// testTime is a fixed mtime so test archives are reproducible.
var testTime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// validMeta is metadata every test archive starts from.
func validMeta() Metadata {
	return Metadata{
		OS: "testos", Release: "1.0", Architecture: "x86_64",
		Types: []string{TypeContainer, TypeVM}, ShutdownSignal: "SIGUSR2", CreatedAt: testTime,
	}
}

func metaJSON(t testing.TB, m Metadata) []byte {
	t.Helper()
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// tarOf builds a tar in memory from headers; a header's content is given by body[name].
func tarOf(t testing.TB, hdrs []*tar.Header, body map[string][]byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		if h.ModTime.IsZero() {
			h.ModTime = testTime
		}
		var data []byte
		if h.Typeflag == tar.TypeReg {
			data = body[h.Name]
			if h.Size == 0 {
				h.Size = int64(len(data))
			}
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("write header %s: %v", h.Name, err)
		}
		if len(data) > 0 {
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func compress(t testing.TB, data []byte, c Compression) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch c {
	case CompressionGzip:
		zw := gzip.NewWriter(&buf)
		zw.Write(data)
		zw.Close()
	case CompressionZstd:
		zw, _ := zstd.NewWriter(&buf)
		zw.Write(data)
		zw.Close()
	default:
		return data
	}
	return buf.Bytes()
}

// file, dir, symlink, hardlink are header shorthands.
func file(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg} }
func dir(name string) *tar.Header  { return &tar.Header{Name: name, Typeflag: tar.TypeDir} }
func symlink(name, target string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}
}
func hardlink(name, target string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}
}

// unifiedImage builds a small valid unified image with extra members appended.
func unifiedImage(t testing.TB, c Compression, extra []*tar.Header, body map[string][]byte) []byte {
	t.Helper()
	if body == nil {
		body = map[string][]byte{}
	}
	if _, ok := body[MetadataFile]; !ok {
		body[MetadataFile] = metaJSON(t, validMeta())
	}
	body["rootfs/etc/hostname"] = []byte("test\n")
	hdrs := []*tar.Header{file(MetadataFile), dir("rootfs/"), dir("rootfs/etc/"), file("rootfs/etc/hostname")}
	return compress(t, tarOf(t, append(hdrs, extra...), body), c)
}

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// assertStoreEmpty checks that a failed import left neither an image nor staging files.
func assertStoreEmpty(t testing.TB, s *Store) {
	t.Helper()
	if n := len(s.List()); n != 0 {
		t.Errorf("store has %d images, want 0", n)
	}
	for _, d := range []string{imagesDir, tmpDir} {
		ents, err := os.ReadDir(filepath.Join(s.Root(), d))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 0 {
			t.Errorf("%s/ not empty after a failed import: %v", d, ents)
		}
	}
}
