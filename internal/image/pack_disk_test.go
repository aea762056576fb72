package image

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tandem/internal/errdefs"
)

// A raw disk packed, imported and extracted comes back byte for byte; drivers see what it is before
// anything is unpacked, and a container cannot use it.
func TestPackDiskRoundTrip(t *testing.T) {
	ctx := context.Background()
	disk := filepath.Join(t.TempDir(), "boot.img")
	content := make([]byte, 4<<20)
	copy(content[510:], []byte{0x55, 0xaa})
	copy(content[3<<20:], "data far in")
	os.WriteFile(disk, content, 0o644)
	meta := vmMeta()
	var buf bytes.Buffer
	if err := PackDisk(&buf, disk, &meta, PackOptions{}); err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	img, err := s.Import(ctx, bytes.NewReader(buf.Bytes()), ImportOptions{Aliases: []string{"bootdisk"}})
	if err != nil {
		t.Fatal(err)
	}
	if img.Format != FormatDisk || img.DiskFormat != DiskRaw {
		t.Fatalf("imported as %s/%s", img.Format, img.DiskFormat)
	}
	cache, err := NewRootfsCache(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	info, err := cache.Describe(ctx, "bootdisk")
	if err != nil || info.DiskFormat != DiskRaw || info.Firmware != FirmwareUEFI || info.Fingerprint != img.Fingerprint {
		t.Fatalf("describe: %+v %v", info, err)
	}
	out := filepath.Join(t.TempDir(), "base.raw")
	os.WriteFile(out+".partial", []byte("a crashed extraction"), 0o644)
	if format, err := cache.ExtractDisk(ctx, "bootdisk", out); err != nil || format != DiskRaw {
		t.Fatalf("extract: %s %v", format, err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, content) {
		t.Error("extracted disk differs from the packed one")
	}
	if _, err := s.Resolve("bootdisk", TypeContainer); err == nil || !strings.Contains(err.Error(), "VM disk image") {
		t.Errorf("a container from a disk image: %v", err)
	}
	if _, err := s.Resolve("bootdisk", TypeVM); err != nil {
		t.Error(err)
	}
}

func TestPackDiskRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	noFirmware := vmMeta()
	noFirmware.Firmware = ""
	container := vmMeta()
	container.Types = []string{TypeContainer, TypeVM}
	for name, c := range map[string]struct {
		path string
		meta Metadata
		want string
	}{
		"backing file":   {write("backed.qcow2", qcow2Header(1024, 0)), vmMeta(), "backing file"},
		"odd raw size":   {write("odd.raw", make([]byte, 1000)), vmMeta(), "multiple of 512"},
		"empty raw":      {write("empty.raw", nil), vmMeta(), "multiple of 512"},
		"no firmware":    {write("ok.raw", make([]byte, 1024)), noFirmware, "firmware"},
		"container type": {write("ok2.raw", make([]byte, 1024)), container, "only the \"vm\" type"},
	} {
		err := PackDisk(&bytes.Buffer{}, c.path, &c.meta, PackOptions{})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want invalid argument with %q", name, err, c.want)
		}
	}
}
