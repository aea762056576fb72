package imagetest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"tandem/internal/image"
)

// Image builds the disk and packs it as a disk-format image file in dir (what `tandem image
// import` takes), returning the file's path.
func (d Disk) Image(ctx context.Context, dir string) (string, error) {
	format := d.Format
	if format == "" {
		format = image.DiskRaw
	}
	disk := filepath.Join(dir, "disk."+format)
	if err := d.Build(ctx, disk); err != nil {
		return "", err
	}
	defer os.Remove(disk)
	meta := image.Metadata{OS: "busybox", Release: "bootdisk", Architecture: image.HostArchitecture(),
		Variant: d.Firmware, Description: "test boot disk (" + d.Firmware + ", " + format + ")",
		Types: []string{image.TypeVM}, Firmware: d.Firmware, CreatedAt: time.Now().UTC()}
	out := filepath.Join(dir, "bootdisk-"+d.Firmware+".tar.zst")
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	err = image.PackDisk(f, disk, &meta, image.PackOptions{})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return out, err
}

// Store opens a store in a temporary directory, closed when t ends, and imports the image file.
func Store(t testing.TB, file string) (*image.Store, *image.Image) {
	t.Helper()
	s, err := image.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := s.Import(context.Background(), f, image.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s, img
}
