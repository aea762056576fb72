// Package storage manages storage pools and the volumes in them: custom volumes, instance root
// disks, per-pool image copies, snapshots, copies, attachments and the run-time leases that keep
// two hosts off one disk.
//
// # Pools
//
//	dir     a local directory (default <Dir>/pools/NAME). The default pool is one (EnsureDefault).
//	btrfs   an existing btrfs mount, or a loop file tandem makes (<Dir>/loop/NAME.img, mounted at
//	        <Dir>/pools/NAME; Recover re-mounts it after a reboot). Quotas are enabled on it.
//	shared  a directory on a shared filesystem every host mounts (NFS, CephFS, GlusterFS, Virtuozzo
//	        Storage). Its identity and every volume record live in the shared directory, so all
//	        hosts see the same volumes; a second host "creating" the pool on the same path joins it.
//
// Pool records are host-local (<Dir>/records/NAME.json); everything about volumes lives in the pool
// (see layout.go), which is what lets a shared pool work without a cluster database.
//
// # Volumes
//
// A volume is named "TYPE/NAME" (TYPE custom, container, vm or image); a bare NAME is a custom
// volume. Names are 1 to 80 of a-z, 0-9, '-', '.' and '_', starting with a letter or digit (the
// instance-name rules plus '.' and '_', long enough for a fingerprint). How data is stored:
//
//	                      dir pool              btrfs pool                 shared pool
//	custom filesystem     ext4 image            ext4 image in a subvolume  ext4 image
//	container root        directory, or ext4    subvolume (qgroup limit)   ext4 image
//	                      image with a size
//	block (vm, custom)    qcow2 file            qcow2 file in a subvolume  qcow2 file
//
// Custom filesystem volumes are ext4 images everywhere, so one volume can be loop-mounted into a
// container, detached, and handed to a VM as a raw virtio disk.
//
// # Quotas (limits.disk)
//
// btrfs: a qgroup limit on the root's subvolume (referenced bytes, so blocks shared with the image
// count). shared: the ext4 image's size. dir: project quotas are missing on most host filesystems,
// so a container root made with a size is an ext4 image (the shared pool's format) and the size is
// enforced; one made without a size is a plain directory with no limit, and cannot be resized.
//
// # Sizes
//
// 0 is refused where a size is needed (ext4 and block volumes), as is anything under MinSize, over
// MaxSize (1 EiB) or over the pool's free space at create time (thin formats included). Sizes are
// rounded up to 4 KiB.
//
// # Crash safety
//
// A volume's record is its journal (records.go): creates and copies write the record first, in
// state creating; other multi-step changes set Pending before touching data and clear it last.
// Recover undoes or finishes what this host left, so a SIGKILL during a copy leaves no orphan.
// Metadata is written with fsutil.WriteFileAtomic.
//
// # Instance roots
//
// CreateInstanceRoot makes TYPE/INSTANCE from an image (instance.go); InstanceRoot says where it is
// on this host (a shared pool's mount point may differ between hosts). On a shared pool another
// host's instance of the same name can adopt it (AdoptInstanceRoot): both are its users, the lease
// lets one run at a time, and DeleteInstanceRoot removes the volume only with its last user.
//
// # Using volumes
//
// Attach/Detach keep used_by (one writer, or any number of read-only users). Acquire takes the
// run-time lease (lease.go) a driver holds while an instance has the disk open; MountVolume gives
// a container the files, VolumePath gives QEMU the disk.
package storage
