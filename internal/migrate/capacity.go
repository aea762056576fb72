package migrate

import (
	"context"
	"io/fs"
	"path/filepath"
	"syscall"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/hostinfo"
	"tandem/internal/instance"
	"tandem/internal/store"
	"tandem/internal/units"
)

// What the destination checks before anything stops: room for the instance's memory (a live
// move) and for its root (a copied one). A VM's hardware, QEMU and CPU are its driver's CanRun.

// needs fills in what the instance needs of a destination.
func needs(ctx context.Context, rec *store.InstanceRecord, drv driver.Driver, live bool, rootDir string, post *api.MigrationPost) {
	if live {
		post.Memory = int64(instance.ParseLimits(rec.Desired.Config).Memory)
		if s, ok := drv.(driver.Statter); ok && post.Memory == 0 {
			if st, err := s.Stats(ctx, rec.Handle); err == nil {
				post.Memory = int64(st.MemoryBytes)
			}
		}
	}
	if rootDir != "" && post.Storage == api.StorageCopy {
		post.DiskBytes = diskUsage(rootDir)
	}
}

// diskUsage is what the tree under dir takes on disk (hard links once).
func diskUsage(dir string) int64 {
	var total int64
	seen := map[uint64]bool{}
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			if st.Nlink > 1 && !d.IsDir() {
				if seen[st.Ino] {
					return nil
				}
				seen[st.Ino] = true
			}
			total += st.Blocks * 512
		}
		return nil
	})
	return total
}

// checkRoom refuses an instance this host has no room for, saying what is short.
func checkRoom(post api.MigrationPost, dir string) error {
	if post.Memory > 0 {
		if _, avail := hostinfo.Memory(); avail > 0 && uint64(post.Memory) > avail {
			return errdefs.Unavailable("not enough memory here for %s: it uses %s, %s is available",
				post.Name, units.FormatSize(uint64(post.Memory)), units.FormatSize(avail))
		}
	}
	if post.DiskBytes > 0 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err == nil {
			free := int64(st.Bavail) * st.Bsize
			if want := post.DiskBytes + post.DiskBytes/10; want > free {
				return errdefs.Unavailable("not enough disk here for %s's root: it takes %s, %s is free",
					post.Name, units.FormatSize(uint64(post.DiskBytes)), units.FormatSize(uint64(free)))
			}
		}
	}
	return nil
}
