package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

func TestImportExportRoundTrip(t *testing.T) {
	for _, c := range []Compression{CompressionZstd, CompressionGzip, CompressionNone} {
		t.Run(string(c), func(t *testing.T) {
			s := openStore(t)
			data := unifiedImage(t, c, nil, nil)
			var reports []int
			ctx := progress.With(context.Background(), func(p int, _ string) { reports = append(reports, p) })
			img, err := s.Import(ctx, bytes.NewReader(data), ImportOptions{Aliases: []string{"test"}})
			if err != nil {
				t.Fatal(err)
			}
			if img.Fingerprint != sha(data) {
				t.Errorf("fingerprint %s, want sha256 of the file %s", img.Fingerprint, sha(data))
			}
			if img.Compression != c || img.Format != FormatUnified || img.Size != int64(len(data)) {
				t.Errorf("record %+v", img)
			}
			if img.Metadata.OS != "testos" || !img.Metadata.Supports(TypeVM) || len(img.Aliases) != 1 {
				t.Errorf("metadata %+v aliases %v", img.Metadata, img.Aliases)
			}
			if len(reports) == 0 || reports[len(reports)-1] != 100 {
				t.Errorf("progress reports %v do not end at 100", reports)
			}
			var out bytes.Buffer
			if err := s.Export(context.Background(), "test", &out); err != nil {
				t.Fatal(err)
			}
			if sha(out.Bytes()) != img.Fingerprint {
				t.Error("export changed the file")
			}
			if err := s.Delete("test"); err != nil {
				t.Fatal(err)
			}
			again, err := s.Import(context.Background(), &out, ImportOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if again.Fingerprint != img.Fingerprint {
				t.Errorf("re-import fingerprint %s, want %s", again.Fingerprint, img.Fingerprint)
			}
		})
	}
}

func TestImportDuplicateAndChecksum(t *testing.T) {
	s := openStore(t)
	data := unifiedImage(t, CompressionZstd, nil, nil)
	if _, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{SHA256: strings.Repeat("0", 64)}); err == nil ||
		!errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("wrong checksum: %v", err)
	}
	assertStoreEmpty(t, s)
	if _, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{SHA256: strings.ToUpper(sha(data))}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second import: %v", err)
	}
}

func TestAliases(t *testing.T) {
	s := openStore(t)
	a, _ := s.Import(context.Background(), bytes.NewReader(unifiedImage(t, CompressionZstd, nil, nil)), ImportOptions{})
	b, _ := s.Import(context.Background(), bytes.NewReader(unifiedImage(t, CompressionGzip, nil, nil)), ImportOptions{})
	if a == nil || b == nil {
		t.Fatal("imports failed")
	}
	for _, bad := range []string{"", ".hidden", "-x", "UPPER", "a/b", "sp ace", strings.Repeat("a", 64), "0123456789abcdef"} {
		if err := s.AddAlias(bad, a.Fingerprint); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("alias %q accepted: %v", bad, err)
		}
	}
	for _, good := range []string{"busybox", "debian-bookworm", "v1.2_3", "_x", strings.Repeat("z", 63)} {
		if err := s.AddAlias(good, a.Fingerprint); err != nil {
			t.Errorf("alias %q: %v", good, err)
		}
	}
	if err := s.AddAlias("busybox", b.Fingerprint); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate alias: %v", err)
	}
	if err := s.AddAlias("busybox", a.Fingerprint); err != nil {
		t.Errorf("same alias, same image: %v", err)
	}
	if err := s.SetAlias("busybox", b.Fingerprint); err != nil {
		t.Fatal(err)
	}
	if img, _ := s.Get("busybox"); img.Fingerprint != b.Fingerprint {
		t.Error("SetAlias did not move the alias")
	}
	if err := s.AddAlias("x", "nonexistent"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("alias to missing image: %v", err)
	}
	if err := s.DeleteAlias("busybox"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAlias("busybox"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("delete missing alias: %v", err)
	}
	// Aliases survive a reopen; deleting an image drops its aliases.
	root := s.Root()
	s.Close()
	s2, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	img, err := s2.Get("debian-bookworm")
	if err != nil || img.Fingerprint != a.Fingerprint || len(img.Aliases) != 4 {
		t.Fatalf("after reopen: %+v %v", img, err)
	}
	if err := s2.Delete(a.Fingerprint); err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Get("debian-bookworm"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("alias of a deleted image: %v", err)
	}
}

func TestFingerprintPrefix(t *testing.T) {
	s := openStore(t)
	img, err := s.Import(context.Background(), bytes.NewReader(unifiedImage(t, CompressionZstd, nil, nil)), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{img.Fingerprint, img.Fingerprint[:12], img.Fingerprint[:40]} {
		if got, err := s.Get(ref); err != nil || got.Fingerprint != img.Fingerprint {
			t.Errorf("Get(%q) = %v, %v", ref, got, err)
		}
	}
	if _, err := s.Get(img.Fingerprint[:11]); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("11-digit prefix: %v", err)
	}
	// Two fake records sharing a 12-digit prefix make that prefix ambiguous.
	s.mu.Lock()
	for _, fp := range []string{"abcdef0123450000000000000000000000000000000000000000000000000000",
		"abcdef0123451111111111111111111111111111111111111111111111111111"} {
		s.images[fp] = &Image{Fingerprint: fp}
	}
	s.mu.Unlock()
	if _, err := s.Get("abcdef012345"); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("ambiguous prefix: %v", err)
	}
	if got, err := s.Get("abcdef0123451"); err != nil || !strings.HasPrefix(got.Fingerprint, "abcdef0123451") {
		t.Errorf("longer unique prefix: %v", err)
	}
}

func TestRefcountBlocksDelete(t *testing.T) {
	s := openStore(t)
	img, err := s.Import(context.Background(), bytes.NewReader(unifiedImage(t, CompressionZstd, nil, nil)), ImportOptions{Aliases: []string{"base"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ref("base", "instance/c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Ref(img.Fingerprint, "instance/c1"); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := s.Ref("base", "pool/default"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("base"); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "instance/c1") {
		t.Fatalf("delete in use: %v", err)
	}
	// References are persisted.
	root := s.Root()
	s.Close()
	s, err = Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, _ := s.Get("base"); len(got.Users) != 2 {
		t.Fatalf("users after reopen: %v", got.Users)
	}
	s.Unref("base", "instance/c1")
	s.Unref("base", "instance/never") // not held: no-op
	if err := s.Delete("base"); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("delete with one user left: %v", err)
	}
	s.Unref("base", "pool/default")
	if err := s.Delete("base"); err != nil {
		t.Fatal(err)
	}
	if err := s.Ref(img.Fingerprint, "instance/c2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ref of deleted image: %v", err)
	}
	assertStoreEmpty(t, s)
}

func TestStoreLockAndRecovery(t *testing.T) {
	s := openStore(t)
	if _, err := Open(s.Root()); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second open: %v", err)
	}
	// A crash mid-import leaves staging files; Open clears them.
	os.MkdirAll(filepath.Join(s.Root(), tmpDir, "import-123"), 0o700)
	os.WriteFile(filepath.Join(s.Root(), tmpDir, "import-123", "image.partial"), []byte("x"), 0o600)
	s.Close()
	s2, err := Open(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	assertStoreEmpty(t, s2)
}

// TestConcurrentUse runs imports, refs, aliases and lookups in parallel (run with -race).
func TestConcurrentUse(t *testing.T) {
	s := openStore(t)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := map[string][]byte{fmt.Sprintf("rootfs/f%d", i): []byte("x")}
			data := unifiedImage(t, CompressionZstd, []*tar.Header{file(fmt.Sprintf("rootfs/f%d", i))}, body)
			img, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{Aliases: []string{fmt.Sprintf("img%d", i)}})
			if err != nil {
				errs <- err
				return
			}
			for j := range 5 {
				if err := s.Ref(img.Fingerprint, fmt.Sprintf("user%d", j)); err != nil {
					errs <- err
				}
				s.List()
				s.Get(img.Fingerprint[:12])
			}
			if err := s.AddAlias(fmt.Sprintf("extra%d", i), img.Fingerprint); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(s.List()); n != 8 {
		t.Errorf("%d images, want 8", n)
	}
	for _, img := range s.List() {
		if len(img.Users) != 5 || len(img.Aliases) != 2 {
			t.Errorf("image %s users %v aliases %v", img.Fingerprint[:12], img.Users, img.Aliases)
		}
	}
}

func TestDiskImage(t *testing.T) {
	s := openStore(t)
	disk := make([]byte, 4<<20)
	copy(disk[1<<20:], "bootable bits")
	data := compress(t, diskImage(t, "disk.raw", disk, vmMeta()), CompressionZstd)
	img, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Format != FormatDisk || img.DiskFormat != DiskRaw || img.Metadata.Firmware != FirmwareUEFI {
		t.Errorf("record %+v", img)
	}
	out := filepath.Join(t.TempDir(), "disk.img")
	format, err := s.ExtractDisk(context.Background(), img.Fingerprint, out)
	if err != nil || format != DiskRaw {
		t.Fatalf("extract: %q %v", format, err)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, disk) {
		t.Error("extracted disk differs")
	}
	if err := s.UnpackRootfs(context.Background(), img.Fingerprint, filepath.Join(t.TempDir(), "r"), UnpackOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unpack rootfs of a disk image: %v", err)
	}
	q := compress(t, diskImage(t, "disk.qcow2", qcow2Header(0, 0), vmMeta()), CompressionGzip)
	if img, err := s.Import(context.Background(), bytes.NewReader(q), ImportOptions{}); err != nil || img.DiskFormat != DiskQcow2 {
		t.Fatalf("qcow2 import: %v", err)
	}
}
