package storage

import (
	"os"
	"path/filepath"
	"time"
)

// Inside every pool's root (the same on every driver, so most code is driver-free):
//
//	.tandem-pool.json                  the pool's identity (name, driver, hosts that joined it)
//	volumes/TYPE/NAME/                 a volume's data directory (a btrfs subvolume on btrfs):
//	                                   the files themselves (dir, subvol), root.img (ext4) or disk.qcow2
//	snapshots/TYPE/NAME@SNAP/          a snapshot: the same shape, read only on btrfs
//	meta/TYPE/NAME.json                the volume's record
//	locks/TYPE/NAME.meta|.lock|.lease  record lock, in-use lock, in-use lease
//	tmp/OPID/                          scratch of one operation (same depth as volumes/TYPE/NAME)
//
// volumes/, snapshots/ and tmp/ entries sit at the same depth so that a qcow2 overlay's relative
// backing path (../../../volumes/image/FP/disk.qcow2) resolves from each of them, on every host
// whatever the shared filesystem's mount point.

const identityFile = ".tandem-pool.json"

var volumeTypes = []string{TypeCustom, TypeContainer, TypeVM, TypeImage}

// identity is the pool's own record inside its root.
type identity struct {
	Name      string    `json:"name"`
	Driver    string    `json:"driver"`
	CreatedAt time.Time `json:"created_at"`
	Hosts     []string  `json:"hosts"`
}

func identityPath(root string) string { return filepath.Join(root, identityFile) }

func dataPath(root, typ, name string) string { return filepath.Join(root, "volumes", typ, name) }
func snapPath(root, typ, name, snap string) string {
	return filepath.Join(root, "snapshots", typ, name+"@"+snap)
}
func recordPath(root, typ, name string) string {
	return filepath.Join(root, "meta", typ, name+".json")
}
func lockBase(root, typ, name string) string { return filepath.Join(root, "locks", typ, name) }
func tmpPath(root, id string) string         { return filepath.Join(root, "tmp", id) }

// fileName is the file a volume of this format keeps in its data directory ("" for trees).
func fileName(format string) string {
	switch format {
	case FormatExt4:
		return "root.img"
	case FormatQcow2:
		return "disk.qcow2"
	}
	return ""
}

// backingRef is an overlay's backing path, relative to any directory at volume depth.
func backingRef(image string) string {
	return filepath.Join("..", "..", "..", "volumes", TypeImage, image, fileName(FormatQcow2))
}

// skeletonDirs are the directories every pool root holds.
func skeletonDirs(root string) []string {
	var dirs []string
	for _, top := range []string{"volumes", "snapshots", "meta", "locks"} {
		for _, t := range volumeTypes {
			dirs = append(dirs, filepath.Join(root, top, t))
		}
	}
	return append(dirs, filepath.Join(root, "tmp"))
}

func makeSkeleton(root string) error {
	for _, d := range skeletonDirs(root) {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return err
		}
	}
	return securePrivate(root)
}

// privateDirs hold container root trees: a host user who could reach them could read a container's
// files and run a setuid binary its root planted there. They are 0700: a container reaches its
// own root through its bundle (a bind mount there), never through the pool.
func privateDirs(root string) []string {
	return []string{filepath.Join(root, "volumes", TypeContainer), filepath.Join(root, "snapshots", TypeContainer)}
}

// securePrivate sets the private dirs' mode (pools made by earlier versions had them 0711).
func securePrivate(root string) error {
	for _, d := range privateDirs(root) {
		if err := os.Chmod(d, 0o700); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// removeSkeleton removes what makeSkeleton made (only tandem's own, by then empty, entries).
func removeSkeleton(root string) error {
	for _, top := range []string{"volumes", "snapshots", "meta", "locks", "tmp"} {
		if err := os.RemoveAll(filepath.Join(root, top)); err != nil {
			return err
		}
	}
	return removeIfExists(identityPath(root))
}
