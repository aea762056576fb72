package imagetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem/internal/image"
	"tandem/internal/testenv"
)

// Both kinds of disk hold what their boot loader reads, and pack into images the store takes as
// disk images with the right firmware. (Booting them is the system test's.)
func TestBuildBootDisks(t *testing.T) {
	for _, c := range []Disk{
		{Firmware: image.FirmwareBIOS, Format: image.DiskQcow2, Marker: "BIOS-MARK"},
		{Firmware: image.FirmwareUEFI, Format: image.DiskRaw, Marker: "UEFI-MARK"},
	} {
		t.Run(c.Firmware, func(t *testing.T) {
			testenv.Require(t, Components(c.Firmware)...)
			ctx := testenv.Context(t, time.Minute)
			dir := t.TempDir()
			raw := filepath.Join(dir, "check.raw")
			c.Format = image.DiskRaw
			start := time.Now()
			if err := c.Build(ctx, raw); err != nil {
				t.Fatal(err)
			}
			t.Logf("built in %v", time.Since(start).Round(time.Millisecond))
			list, err := exec.Command("mdir", "-i", raw+"@@"+strconv.Itoa(partStart), "-/", "-a", "::").CombinedOutput()
			if err != nil {
				t.Fatalf("mdir: %v %s", err, list)
			}
			want := []string{"vmlinuz", "initrd", "syslinux cfg", "ldlinux  sys"}
			if c.Firmware == image.FirmwareUEFI {
				want = []string{"vmlinuz", "initrd", "BOOTX64  EFI"}
			}
			for _, w := range want {
				if !strings.Contains(string(list), w) {
					t.Errorf("the FAT lacks %q:\n%s", w, list)
				}
			}
			mbr := make([]byte, 512)
			f, _ := os.Open(raw)
			f.Read(mbr)
			f.Close()
			if mbr[510] != 0x55 || mbr[511] != 0xaa || (mbr[450] == 0xef) != (c.Firmware == image.FirmwareUEFI) {
				t.Errorf("partition table: type %#x signature %x", mbr[450], mbr[510:])
			}

			file, err := Disk{Firmware: c.Firmware, Format: image.DiskQcow2, Marker: c.Marker}.Image(ctx, dir)
			if err != nil {
				t.Fatal(err)
			}
			_, img := Store(t, file)
			if img.Format != image.FormatDisk || img.DiskFormat != image.DiskQcow2 || img.Metadata.Firmware != c.Firmware {
				t.Errorf("imported %s/%s firmware %q", img.Format, img.DiskFormat, img.Metadata.Firmware)
			}
			t.Logf("image %d KiB", img.Size>>10)
		})
	}
}
