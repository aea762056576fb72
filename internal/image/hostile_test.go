package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tandem/internal/errdefs"
	"tandem/internal/testenv"
)

// hostileCase is an archive that must be refused, with a phrase the error must contain.
type hostileCase struct {
	name    string
	archive func(t *testing.T, outside string) []byte
	want    string // substring of the error
	limits  Limits
	rootfs  bool // also run Unpack (the archive's problem is in rootfs/)
}

func rootfsCase(name, want string, extra ...*tar.Header) hostileCase {
	return hostileCase{name: name, want: want, rootfs: true, archive: func(t *testing.T, _ string) []byte {
		return unifiedImage(t, CompressionGzip, extra, nil)
	}}
}

func metaCase(name, want string, meta string) hostileCase {
	return hostileCase{name: name, want: want, archive: func(t *testing.T, _ string) []byte {
		return unifiedImage(t, CompressionNone, nil, map[string][]byte{MetadataFile: []byte(meta)})
	}}
}

func qcow2Header(backing uint64, incompat uint64) []byte {
	h := make([]byte, 512)
	copy(h, magicQcow2)
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint64(h[8:], backing)
	binary.BigEndian.PutUint32(h[20:], 16)
	binary.BigEndian.PutUint64(h[72:], incompat)
	return h
}

func diskImage(t *testing.T, name string, content []byte, meta Metadata) []byte {
	return tarOf(t, []*tar.Header{file(MetadataFile), file(name)},
		map[string][]byte{MetadataFile: metaJSON(t, meta), name: content})
}

func vmMeta() Metadata {
	m := validMeta()
	m.Types, m.Firmware = []string{TypeVM}, FirmwareUEFI
	return m
}

func hostileCases() []hostileCase {
	long := strings.Repeat("a", 256)
	cases := []hostileCase{
		rootfsCase("absolute path", "absolute path", file("/etc/passwd")),
		rootfsCase("dotdot in rootfs", "'..'", file("rootfs/../../escape")),
		rootfsCase("dotdot at top", "'..'", file("../escape")),
		rootfsCase("relative symlink escaping", "points outside the rootfs", symlink("rootfs/etc/evil", "../../../etc/passwd")),
		rootfsCase("write through in-root symlink", "is a symlink", symlink("rootfs/lnk", "etc"), file("rootfs/lnk/x")),
		rootfsCase("hardlink absolute", "absolute path", hardlink("rootfs/h", "/etc/passwd")),
		rootfsCase("hardlink dotdot", "'..'", hardlink("rootfs/h", "rootfs/../../etc/passwd")),
		rootfsCase("hardlink outside rootfs", "outside the rootfs", hardlink("rootfs/h", MetadataFile)),
		rootfsCase("hardlink not yet extracted", "not an earlier member", hardlink("rootfs/h", "rootfs/later"), file("rootfs/later")),
		rootfsCase("hardlink to directory", "is a directory", hardlink("rootfs/h", "rootfs/etc")),
		rootfsCase("char device", "device nodes are not allowed",
			&tar.Header{Name: "rootfs/dev/mem", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 1}),
		rootfsCase("block device", "device nodes are not allowed",
			&tar.Header{Name: "rootfs/dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8}),
		rootfsCase("long component", "longer than 255", file("rootfs/"+long)),
		rootfsCase("long path", "longer than 4096", file("rootfs/"+strings.Repeat("abcdefgh/", 460)+"x")),
		rootfsCase("directory replaced by file", "would replace a directory", file("rootfs/etc")),
		rootfsCase("rootfs is a symlink", "must be a directory", symlink("rootfs", "/")),
		rootfsCase("parent is a file", "is not a directory", file("rootfs/etc/hostname/x")),
		rootfsCase("unknown top-level member", "unexpected member", file("evil.sh")),
		{name: "write through symlink to host dir", want: "is a symlink", rootfs: true, archive: func(t *testing.T, outside string) []byte {
			return unifiedImage(t, CompressionZstd, []*tar.Header{symlink("rootfs/evil", outside), file("rootfs/evil/pwned")}, nil)
		}},
		{name: "decompression bomb", want: "size limit", rootfs: true, limits: Limits{MaxBytes: 1 << 20}, archive: func(t *testing.T, _ string) []byte {
			return unifiedImage(t, CompressionZstd, []*tar.Header{file("rootfs/zeros")}, map[string][]byte{"rootfs/zeros": make([]byte, 4<<20)})
		}},
		{name: "too many members", want: "more than 5 members", rootfs: true, limits: Limits{MaxEntries: 5}, archive: func(t *testing.T, _ string) []byte {
			return unifiedImage(t, CompressionGzip, []*tar.Header{dir("rootfs/a/"), dir("rootfs/b/"), dir("rootfs/c/")}, nil)
		}},
		{name: "truncated gzip", want: "truncated", rootfs: true, archive: func(t *testing.T, _ string) []byte {
			full := unifiedImage(t, CompressionGzip, []*tar.Header{file("rootfs/big")}, map[string][]byte{"rootfs/big": bytes.Repeat([]byte("tandem "), 20000)})
			return full[:len(full)/2]
		}},
		{name: "truncated zstd", want: "truncated", rootfs: true, archive: func(t *testing.T, _ string) []byte {
			full := unifiedImage(t, CompressionZstd, []*tar.Header{file("rootfs/big")}, map[string][]byte{"rootfs/big": bytes.Repeat([]byte("tandem "), 20000)})
			return full[:len(full)/2]
		}},
		{name: "truncated tar", want: "truncated", rootfs: true, archive: func(t *testing.T, _ string) []byte {
			full := unifiedImage(t, CompressionNone, []*tar.Header{file("rootfs/big")}, map[string][]byte{"rootfs/big": make([]byte, 8192)})
			return full[:len(full)-4096]
		}},
		{name: "gzip trailer cut (tar intact)", want: "truncated", rootfs: true, archive: func(t *testing.T, _ string) []byte {
			full := unifiedImage(t, CompressionGzip, nil, nil)
			return full[:len(full)-4] // drop the length field: only the final check sees it
		}},
		{name: "corrupt gzip", want: "archive is corrupt", rootfs: true, archive: func(t *testing.T, _ string) []byte {
			full := unifiedImage(t, CompressionGzip, []*tar.Header{file("rootfs/big")}, map[string][]byte{"rootfs/big": bytes.Repeat([]byte("0123456789abcdef"), 8000)})
			full[len(full)/2] ^= 0xff
			return full
		}},
		{name: "xz", want: "xz-compressed", archive: func(t *testing.T, _ string) []byte {
			return append(append([]byte{}, magicXz...), make([]byte, 600)...)
		}},
		{name: "not an archive", want: "not an image", archive: func(t *testing.T, _ string) []byte {
			return bytes.Repeat([]byte("hello world\n"), 100)
		}},
		{name: "metadata missing", want: "no metadata.json", archive: func(t *testing.T, _ string) []byte {
			return tarOf(t, []*tar.Header{dir("rootfs/"), file("rootfs/x")}, nil)
		}},
		{name: "metadata twice", want: "appears twice", archive: func(t *testing.T, _ string) []byte {
			return unifiedImage(t, CompressionNone, []*tar.Header{file("./" + MetadataFile)}, nil)
		}},
		{name: "no rootfs and no disk", want: "neither rootfs/ nor disk", archive: func(t *testing.T, _ string) []byte {
			return tarOf(t, []*tar.Header{file(MetadataFile)}, map[string][]byte{MetadataFile: metaJSON(t, validMeta())})
		}},
		metaCase("metadata invalid JSON", "invalid JSON", `{"os": "x", `),
		metaCase("metadata is YAML", "invalid JSON", "os: busybox\narchitecture: x86_64\n"),
		metaCase("unknown architecture", "unknown architecture", `{"os":"x","architecture":"vax","types":["vm"]}`),
		metaCase("empty types", "types is empty", `{"os":"x","architecture":"x86_64","types":[]}`),
		metaCase("unknown type", "unknown instance type", `{"os":"x","architecture":"x86_64","types":["jail"]}`),
		metaCase("unknown field", "unknown field", `{"os":"x","architecture":"x86_64","types":["vm"],"shutdown_sginal":"SIGTERM"}`),
		metaCase("bad signal", "shutdown_signal", `{"os":"x","architecture":"x86_64","types":["vm"],"shutdown_signal":"SIGFOO"}`),
		metaCase("bad firmware", "firmware", `{"os":"x","architecture":"x86_64","types":["vm"],"firmware":"coreboot"}`),
		metaCase("missing os", "os", `{"architecture":"x86_64","types":["vm"]}`),
		{name: "disk and rootfs", want: "both rootfs/ and a disk", archive: func(t *testing.T, _ string) []byte {
			return unifiedImage(t, CompressionNone, []*tar.Header{file("disk.raw")}, map[string][]byte{"disk.raw": make([]byte, 512)})
		}},
		{name: "disk image for containers", want: "only the \"vm\" type", archive: func(t *testing.T, _ string) []byte {
			m := vmMeta()
			m.Types = []string{TypeContainer, TypeVM}
			return diskImage(t, "disk.raw", make([]byte, 1024), m)
		}},
		{name: "disk image without firmware", want: "must set firmware", archive: func(t *testing.T, _ string) []byte {
			m := vmMeta()
			m.Firmware = ""
			return diskImage(t, "disk.raw", make([]byte, 1024), m)
		}},
		{name: "qcow2 with backing file", want: "backing file", archive: func(t *testing.T, _ string) []byte {
			return diskImage(t, "disk.qcow2", qcow2Header(1024, 0), vmMeta())
		}},
		{name: "qcow2 with external data file", want: "external data file", archive: func(t *testing.T, _ string) []byte {
			return diskImage(t, "disk.qcow2", qcow2Header(0, 1<<2), vmMeta())
		}},
		{name: "qcow2 without magic", want: "not a qcow2", archive: func(t *testing.T, _ string) []byte {
			return diskImage(t, "disk.qcow2", make([]byte, 1024), vmMeta())
		}},
		{name: "raw disk that is qcow2", want: "name it disk.qcow2", archive: func(t *testing.T, _ string) []byte {
			return diskImage(t, "disk.raw", qcow2Header(0, 0), vmMeta())
		}},
		{name: "raw disk odd size", want: "multiple of 512", archive: func(t *testing.T, _ string) []byte {
			return diskImage(t, "disk.raw", make([]byte, 1000), vmMeta())
		}},
	}
	return cases
}

// TestHostileImport checks that every hostile archive fails to import with a clear, Invalid error
// and leaves the store as it was.
func TestHostileImport(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			outside := t.TempDir()
			data := tc.archive(t, outside)
			_, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{Limits: tc.limits, Aliases: []string{"x"}})
			if err == nil {
				t.Fatal("import succeeded")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("error %q is not ErrInvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			assertStoreEmpty(t, s)
			if _, err := s.Get("x"); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("alias exists after failed import: %v", err)
			}
			assertDirEmpty(t, outside)
		})
	}
}

// TestHostileUnpack runs the rootfs cases through Unpack directly (it does not rely on an import
// having validated the archive) and checks that nothing is left behind, inside or outside.
func TestHostileUnpack(t *testing.T) {
	testenv.Require(t, "root")
	for _, tc := range hostileCases() {
		if !tc.rootfs {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			parent, outside := t.TempDir(), t.TempDir()
			target := filepath.Join(parent, "rootfs")
			err := Unpack(context.Background(), bytes.NewReader(tc.archive(t, outside)), target, UnpackOptions{Limits: tc.limits})
			if err == nil {
				t.Fatal("unpack succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			assertDirEmpty(t, parent)
			assertDirEmpty(t, outside)
		})
	}
}

func assertDirEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("%s is not empty: %v", dir, names)
	}
}

// TestOpenDirNeverFollows checks the extractor's own guard, below the archive rules: a symlink
// already in the tree (planted any way at all) is not followed.
func TestOpenDirNeverFollows(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "evil")); err != nil {
		t.Fatal(err)
	}
	x, err := newExtractor(root, UnpackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.close()
	if _, err := x.openDir("rootfs/evil/sub/f", "evil/sub"); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("openDir through a symlink: %v", err)
	}
	assertDirEmpty(t, outside)
}
