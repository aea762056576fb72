package storage

import (
	"context"
	"os"
	"strconv"
	"strings"

	"tandem/internal/errdefs"
	"tandem/internal/hostexec"
	"tandem/internal/units"
)

// An ext4 volume is one sparse image file, so its size is a hard quota that holds on any host
// filesystem, shared ones included, and the same file can be a raw disk for a VM.

// makeExt4 creates an ext4 image of size bytes, filled from the tree at fromDir when given
// (mkfs.ext4 -d copies owners, modes, xattrs and hard links without mounting anything).
func makeExt4(ctx context.Context, file string, size uint64, fromDir string) error {
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(size))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// -m 0: the size asked for is all usable; the reserve is for a host's root, not a volume's.
	args := []string{"-q", "-F", "-m", "0"}
	if fromDir != "" {
		args = append(args, "-d", fromDir)
	}
	_, err = run(ctx, "mkfs.ext4", append(args, file)...)
	return err
}

// growExt4 grows an image and its filesystem: online through its loop device when mounted here,
// offline otherwise.
func growExt4(ctx context.Context, file string, size uint64, mounted bool) error {
	if mounted && !hasCap(capSysResource) {
		return errdefs.Unavailable("growing a mounted ext4 volume needs CAP_SYS_RESOURCE, which this daemon lacks: " +
			"stop the instance (unmount the volume) and resize it offline")
	}
	if err := os.Truncate(file, int64(size)); err != nil {
		return err
	}
	if mounted {
		dev, err := loopDeviceOf(ctx, file)
		if err != nil {
			return err
		}
		if _, err := run(ctx, "losetup", "-c", dev); err != nil {
			return err
		}
		_, err = run(ctx, "resize2fs", dev)
		return err
	}
	if err := fsckExt4(ctx, file); err != nil {
		return err
	}
	_, err := run(ctx, "resize2fs", file)
	return err
}

// shrinkExt4 shrinks an unmounted image; resize2fs refuses when the files do not fit.
func shrinkExt4(ctx context.Context, file string, size uint64) error {
	if err := fsckExt4(ctx, file); err != nil {
		return err
	}
	if _, err := run(ctx, "resize2fs", file, strconv.FormatUint(size/1024, 10)+"K"); err != nil {
		return errdefs.Conflict("cannot shrink to %s: %v", units.FormatSize(size), err)
	}
	return os.Truncate(file, int64(size))
}

// fsckExt4 checks an unmounted image, as resize2fs demands; exit 1 means errors were fixed.
func fsckExt4(ctx context.Context, file string) error {
	_, err := run(ctx, "e2fsck", "-f", "-p", file)
	if err != nil && hostexec.ExitCode(err) != 1 {
		return err
	}
	return nil
}

// loopDeviceOf is the loop device backing file.
func loopDeviceOf(ctx context.Context, file string) (string, error) {
	out, err := run(ctx, "losetup", "-l", "-n", "-O", "NAME", "-j", file)
	if err != nil {
		return "", err
	}
	if f := strings.Fields(out); len(f) > 0 {
		return f[0], nil
	}
	return "", errdefs.NotFound("no loop device backs %s", file)
}

const capSysResource = 24 // the kernel's ext4 online resize checks it

// hasCap reads this process's effective capabilities.
func hasCap(bit uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<bit) != 0
		}
	}
	return false
}
