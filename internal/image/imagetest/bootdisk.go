// Package imagetest builds bootable VM disk images for tests, offline and in seconds: the guest
// kernel and a busybox initramfs whose init prints a marker and a counter on the serial console,
// behind SYSLINUX (BIOS) or a standalone GRUB (UEFI) on the FAT partition of an MBR disk.
package imagetest

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"tandem/internal/driver/vm/bootfs"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/driver/vm/vmtest"
	"tandem/internal/hostexec"
	"tandem/internal/image"
)

// Where Debian puts what the boot loaders need (syslinux-common, grub-efi-amd64-bin).
const (
	syslinuxMBR = "/usr/lib/syslinux/mbr/mbr.bin"
	grubEFIDir  = "/usr/lib/grub/x86_64-efi"
)

// partStart is where the FAT partition starts: 1 MiB, as partitioning tools align it.
const partStart = 1 << 20

// Disk describes a test boot disk.
type Disk struct {
	Firmware string // image.FirmwareBIOS (SYSLINUX) or image.FirmwareUEFI (GRUB as EFI/BOOT/BOOTX64.EFI)
	Format   string // image.DiskRaw (default) or image.DiskQcow2
	// Marker starts the line init prints at boot ("<Marker> firmware=bios") and every second
	// after ("<Marker> tick N").
	Marker  string
	Kernel  string // a bzImage; default vmlinuz in vmtest.KernelDir()
	Busybox string // a static busybox; default vmtest.Busybox()
}

// Components is what building a disk for firmware needs (testenv.Require's names).
func Components(firmware string) []string {
	c := []string{"mtools", "qemu-img", "guest-kernel", "busybox"}
	if firmware == image.FirmwareBIOS {
		return append(c, "syslinux")
	}
	return append(c, "grub-efi")
}

// Build writes the disk to path.
func (d Disk) Build(ctx context.Context, path string) error {
	if d.Kernel == "" {
		d.Kernel = filepath.Join(vmtest.KernelDir(), "vmlinuz")
	}
	if d.Busybox == "" {
		d.Busybox = vmtest.Busybox()
	}
	work, err := os.MkdirTemp(filepath.Dir(path), ".bootdisk-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	files := map[string]string{"vmlinuz": d.Kernel, "initrd.img": filepath.Join(work, "initrd.img")}
	if err := d.writeInitramfs(files["initrd.img"]); err != nil {
		return err
	}
	cmdline := qemucmd.KernelArgs(qemucmd.Q35, 0)
	switch d.Firmware {
	case image.FirmwareBIOS:
		files["syslinux.cfg"] = filepath.Join(work, "syslinux.cfg")
		err = os.WriteFile(files["syslinux.cfg"], []byte(fmt.Sprintf(syslinuxCfg, cmdline)), 0o644)
	case image.FirmwareUEFI:
		files["EFI/BOOT/BOOTX64.EFI"] = filepath.Join(work, "BOOTX64.EFI")
		err = grubEFI(ctx, work, files["EFI/BOOT/BOOTX64.EFI"], cmdline)
	default:
		err = fmt.Errorf("imagetest: firmware %q: want bios or uefi", d.Firmware)
	}
	if err != nil {
		return err
	}
	raw := filepath.Join(work, "disk.raw")
	if err := fatDisk(ctx, raw, d.Firmware, files); err != nil {
		return err
	}
	if d.Format == image.DiskQcow2 {
		return run(ctx, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path)
	}
	return os.Rename(raw, path)
}

// initScript is the whole guest: it says which firmware booted it, then counts.
const initScript = `#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
fw=bios
[ -d /sys/firmware/efi ] && fw=uefi
echo "%[1]s firmware=$fw"
i=0
while true; do
	i=$((i + 1))
	echo "%[1]s tick $i"
	/bin/busybox sleep 1
done
`

func (d Disk) writeInitramfs(path string) error {
	if err := bootfs.CheckStatic(d.Busybox); err != nil {
		return err
	}
	bb, err := os.ReadFile(d.Busybox)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	c := bootfs.NewCPIO(&buf)
	for _, dir := range []string{"bin", "dev", "proc", "sys"} {
		c.Dir(dir)
	}
	c.CharDev("dev/console", 5, 1) // init's stdio, before anything mounts /dev
	c.File("bin/busybox", 0o755, bb)
	c.File("init", 0o755, []byte(fmt.Sprintf(initScript, d.Marker)))
	if err := c.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// syslinuxCfg boots at once, on the serial port as well as the screen.
const syslinuxCfg = `SERIAL 0 115200
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND %s
`

// grubCfg finds the partition holding the kernel and boots it at once.
const grubCfg = `set timeout=0
search --no-floppy --file /vmlinuz --set=root
linux /vmlinuz %s
initrd /initrd.img
boot
`

// grubEFI makes a standalone GRUB for UEFI with grubCfg built in, and only the modules it needs.
func grubEFI(ctx context.Context, work, out, cmdline string) error {
	cfg := filepath.Join(work, "grub.cfg")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(grubCfg, cmdline)), 0o644); err != nil {
		return err
	}
	return run(ctx, "grub-mkstandalone", "-O", "x86_64-efi", "-d", grubEFIDir, "-o", out,
		"--install-modules=normal linux search search_fs_file part_msdos fat boot",
		"--modules=part_msdos fat", "--locales=", "--fonts=", "--themes=",
		"boot/grub/grub.cfg="+cfg)
}

// fatDisk writes a raw disk: an MBR with one partition from partStart to the end, a FAT filesystem
// in it holding files (disk path -> host file), and for BIOS SYSLINUX's boot code in both.
func fatDisk(ctx context.Context, path, firmware string, files map[string]string) error {
	var total int64 = 8 << 20 // FAT, GRUB and slack
	for _, src := range files {
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		total += fi.Size()
	}
	total = partStart + (total+1<<20-1)&^(1<<20-1)
	mbr := make([]byte, 512)
	partType, active := byte(0xef), byte(0) // the EFI system partition
	if firmware == image.FirmwareBIOS {
		code, err := os.ReadFile(syslinuxMBR)
		if err != nil {
			return err
		}
		copy(mbr[:440], code)
		partType, active = 0x0e, 0x80 // FAT16 (LBA), the one mbr.bin boots
	}
	writePartition(mbr[446:462], active, partType, partStart/512, (total-partStart)/512)
	mbr[510], mbr[511] = 0x55, 0xaa
	if err := os.WriteFile(path, mbr, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(path, total); err != nil {
		return err
	}
	fat := path + "@@" + strconv.Itoa(partStart)
	if err := run(ctx, "mformat", "-i", fat, "-T", strconv.FormatInt((total-partStart)/512, 10),
		"-h", "64", "-s", "32", "-H", strconv.Itoa(partStart/512), "-v", "TANDEM", "::"); err != nil {
		return err
	}
	// Directories before the files in them (mcopy makes none); sorted, a parent comes first.
	dirs := map[string]bool{}
	for dst := range files {
		for dir := filepath.Dir(dst); dir != "."; dir = filepath.Dir(dir) {
			dirs[dir] = true
		}
	}
	for _, dir := range slices.Sorted(maps.Keys(dirs)) {
		if err := run(ctx, "mmd", "-i", fat, "::/"+dir); err != nil {
			return err
		}
	}
	for dst, src := range files {
		if err := run(ctx, "mcopy", "-i", fat, src, "::/"+dst); err != nil {
			return err
		}
	}
	if firmware == image.FirmwareBIOS {
		return run(ctx, "syslinux", "--install", "--offset", strconv.Itoa(partStart), path)
	}
	return nil
}

// writePartition fills a 16-byte MBR partition entry with LBA addresses (CHS set to "beyond").
func writePartition(e []byte, active, typ byte, start, sectors int64) {
	e[0] = active
	copy(e[1:4], []byte{0xfe, 0xff, 0xff})
	e[4] = typ
	copy(e[5:8], []byte{0xfe, 0xff, 0xff})
	binary.LittleEndian.PutUint32(e[8:12], uint32(start))
	binary.LittleEndian.PutUint32(e[12:16], uint32(sectors))
}

func run(ctx context.Context, name string, args ...string) error {
	return hostexec.Command(name, args...).Run(ctx)
}
