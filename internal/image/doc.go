// Package image is the per-host image library: a content-addressed store of image files with
// metadata, aliases and reference counts, safe unpacking of hostile archives, and offline builders
// (busybox, Debian via debootstrap) plus the helper that turns a rootfs into a VM's root disk.
//
// # Image file formats
//
// An image file is a tar archive, compressed with zstd or gzip or not at all (detected from the
// first bytes, never from the file name). Member names may start with "./". Allowed members:
//
//	metadata.json   required, a regular file of at most 1 MiB (JSON, see Metadata)
//	rootfs/...      the unified format: a root filesystem tree, for containers and VMs
//	disk.qcow2      the disk format: a bootable disk for VMs only (qcow2 magic "QFI\xfb")
//	disk.raw        the disk format, raw
//
// Anything else at the top level is rejected, as is an archive with both rootfs/ and a disk or
// with neither. JSON was chosen over YAML to stay on the standard library; unknown metadata fields
// are rejected so that a typo ("shutdown_sginal") fails loudly instead of being dropped.
//
// metadata.json example:
//
//	{
//	  "os": "busybox", "release": "1.35.0", "architecture": "x86_64", "variant": "default",
//	  "description": "BusyBox 1.35.0",
//	  "types": ["container", "vm"],
//	  "kernel_cmdline": "console=ttyS0 quiet",
//	  "shutdown_signal": "SIGUSR2",
//	  "firmware": "",
//	  "created_at": "2025-05-20T00:00:00Z"
//	}
//
// "types" lists "container" and/or "vm"; a disk image must be exactly ["vm"] and must set
// "firmware" to "bios" or "uefi". "shutdown_signal" is the signal that makes the image's init power
// off (SIGRTMIN+3 for systemd, SIGUSR2 for busybox init); empty means SIGTERM. "architecture" uses
// kernel names (x86_64, aarch64, ...); Debian names (amd64, arm64, ...) are accepted and normalised.
// A qcow2 disk must not name a backing file or an external data file: either would let a hostile
// image make QEMU read a host file.
//
// # Store layout
//
//	<root>/images/<sha256>/image.tar[.zst|.gz]   the file exactly as imported (its sha256 is the name)
//	<root>/images/<sha256>/image.json            the Image record (metadata, users)
//	<root>/aliases.json                          alias name -> fingerprint, the only alias record
//	<root>/tmp/                                  staging; emptied on Open
//	<root>/lock                                  flock held while a Store is open (one user per dir)
//
// An image directory is complete before it is renamed into images/, so a crash never leaves a
// partial image. Every record is written as x.new, fsynced, renamed, and the directory fsynced.
//
// # Unpacking rules
//
// Unpack never follows a symlink: every path component is opened with O_NOFOLLOW relative to the
// target, so a member that would be written through a symlink fails (even one that stays inside
// the rootfs, because a later member cannot be checked against what the link will point to).
// Rejected: absolute names, ".." components, names over 4096 bytes or components over 255,
// relative symlink targets that climb above the rootfs root (absolute targets are fine: they
// resolve inside the rootfs when it is used as a root), hardlinks to anything that is not an
// earlier non-directory member of the rootfs, char and block devices (the runtime populates /dev;
// UnpackOptions.AllowDevices overrides), more data than the size cap (a decompression bomb), and a
// truncated or corrupt archive (the compressed stream is read to its end so checksums are checked).
// FIFOs are allowed: they are harmless and some images carry them. Ownership, modes (setuid
// included), mtimes and the security.capability and user.* xattrs are kept. Unpacking goes into a
// temporary directory next to the target that is renamed into place only on success.
//
// # Builders
//
// Store.Build runs BuildBusybox (from the host's static /bin/busybox; no network, no root; the
// same binary always gives the same fingerprint) or BuildDebian (debootstrap minbase from the
// host's apt mirror with systemd, udev, dbus, networkd+resolved; needs root), imports the tarball
// and points the aliases "busybox", or "debian-<release>" and "debian", at it. Both images run as
// containers and as VMs. busybox: init with /etc/inittab, udhcpc on eth0, acpid for the ACPI
// power button, a console shell; shutdown signal SIGUSR2. debian: shutdown signal SIGRTMIN+3
// (37; pass the number to runc, which does not know the name).
//
// # Images as VMs
//
// BuildRootDisk makes an ext4 disk of an unpacked rootfs (mkfs.ext4 -d, no mount) as a qcow2 base;
// the VM driver boots it with the guest kernel and its own initramfs (internal/driver/vm/bootfs).
// A disk image boots its own disk through its firmware: RootfsCache.Describe tells the driver
// which kind an image is, ExtractDisk hands over the disk, and PackDisk makes such an image from
// a qcow2 or raw file (internal/image/imagetest builds small bootable ones for tests).
package image
