package image

import (
	"context"
	"os"
	"path/filepath"
	"sync"

	"tandem/internal/driver"
)

// RootfsCache unpacks each image's rootfs once and hands drivers the shared, read-only directory
// (driver.Images). Drivers copy it per instance. It also hands the VM driver disk images' disks
// (driver.DiskImages).
type RootfsCache struct {
	store *Store
	dir   string

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per fingerprint: one unpack at a time
}

// NewRootfsCache keeps unpacked rootfs trees under dir.
func NewRootfsCache(store *Store, dir string) (*RootfsCache, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &RootfsCache{store: store, dir: dir, locks: map[string]*sync.Mutex{}}, nil
}

var (
	_ driver.Images     = (*RootfsCache)(nil)
	_ driver.DiskImages = (*RootfsCache)(nil)
)

// Rootfs returns the unpacked rootfs of an image, unpacking it on first use.
func (c *RootfsCache) Rootfs(ctx context.Context, ref string) (string, driver.ImageInfo, error) {
	img, err := c.store.Get(ref)
	if err != nil {
		return "", driver.ImageInfo{}, err
	}
	info := driverInfo(img)
	lock := c.lockFor(img.Fingerprint)
	lock.Lock()
	defer lock.Unlock()
	target := filepath.Join(c.dir, img.Fingerprint)
	if _, err := os.Stat(target); err == nil {
		return target, info, nil
	}
	// Unpack goes through a temporary directory renamed into place, so target exists only whole.
	if err := c.store.UnpackRootfs(ctx, img.Fingerprint, target, UnpackOptions{}); err != nil {
		return "", driver.ImageInfo{}, err
	}
	return target, info, nil
}

// Describe says what an image is (a disk image has DiskFormat and Firmware set) without unpacking it.
func (c *RootfsCache) Describe(_ context.Context, ref string) (driver.ImageInfo, error) {
	img, err := c.store.Get(ref)
	if err != nil {
		return driver.ImageInfo{}, err
	}
	return driverInfo(img), nil
}

// ExtractDisk writes a disk image's disk to out. It is not cached here: the VM driver keeps one
// base disk per image and counts its users.
func (c *RootfsCache) ExtractDisk(ctx context.Context, ref, out string) (string, error) {
	return c.store.ExtractDisk(ctx, ref, out)
}

func driverInfo(img *Image) driver.ImageInfo {
	return driver.ImageInfo{Fingerprint: img.Fingerprint, OS: img.Metadata.OS,
		ShutdownSignal: img.Metadata.ShutdownSignal, KernelCmdline: img.Metadata.KernelCmdline,
		DiskFormat: img.DiskFormat, Firmware: img.Metadata.Firmware}
}

// Forget removes an image's unpacked tree (when the image is deleted).
func (c *RootfsCache) Forget(fingerprint string) error {
	lock := c.lockFor(fingerprint)
	lock.Lock()
	defer lock.Unlock()
	return os.RemoveAll(filepath.Join(c.dir, fingerprint))
}

func (c *RootfsCache) lockFor(fp string) *sync.Mutex {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locks[fp]
	if !ok {
		l = &sync.Mutex{}
		c.locks[fp] = l
	}
	return l
}
