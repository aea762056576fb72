package system

import (
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/vmtest"
	"tandem/internal/image"
	"tandem/internal/image/imagetest"
	"tandem/internal/testenv"
)

// diskBootDeadline bounds a disk image's boot to its marker under TCG: firmware, boot loader and
// the kernel take about 12 s (SeaBIOS) to 20 s (OVMF) on an idle 2-core machine, but 1.5 to 2.5
// minutes were seen with other tests' guests loading it; past this the guest hung.
const diskBootDeadline = 5 * time.Minute

// importBootDisk builds a test boot disk, packs it as a disk image and imports it under alias.
func importBootDisk(t *testing.T, h *daemonHarness, disk imagetest.Disk, alias string) {
	t.Helper()
	ctx := testenv.Context(t, 2*time.Minute)
	file, err := disk.Image(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h.must("image", "import", file, "--alias", alias)
}

// waitConsole waits for a line in the instance's console log and returns the log.
func waitConsole(t *testing.T, h *daemonHarness, name, want string, d time.Duration) string {
	t.Helper()
	var log string
	for deadline := time.Now().Add(d); ; time.Sleep(time.Second) {
		log, _, _ = h.tandem("console", name, "--show-log")
		if strings.Contains(log, want) {
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s hung: %q not on its console within %v:\n%s", name, want, d, tail(log, 3000))
		}
	}
}

// lastTick is the highest counter value the disk's init printed.
func lastTick(log, marker string) int {
	n := 0
	for _, m := range regexp.MustCompile(regexp.QuoteMeta(marker)+` tick (\d+)`).FindAllStringSubmatch(log, -1) {
		v, _ := strconv.Atoi(m[1])
		n = max(n, v)
	}
	return n
}

// bases lists the pool copies of VM images that instances share.
func bases(t *testing.T, h *daemonHarness) []string {
	t.Helper()
	// The default pool's copy of a VM image: a qcow2 file, whatever the image's format.
	b, err := filepath.Glob(filepath.Join(h.dir, "storage", "pools", "default", "volumes", "image", "*.vm", "disk.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A BIOS disk image (SYSLINUX on a qcow2 disk) boots as a VM with no kernel of ours; a container or
// UEFI cannot have it; exec fails at once for want of an agent; the VM outlives a daemon SIGKILL,
// stops, boots again, and its base disk goes with it.
func TestDiskImageBIOS(t *testing.T) {
	testenv.Require(t, realDrivers...)
	testenv.Require(t, imagetest.Components(image.FirmwareBIOS)...)
	h := startHost(t, "--accel", "tcg", "--default-network=false")
	const marker = "BIOS-DISK-MARK"
	importBootDisk(t, h, imagetest.Disk{Firmware: image.FirmwareBIOS, Format: image.DiskQcow2, Marker: marker}, "bootbios")

	if _, errOut, err := h.tandem("launch", "bootbios", "c1"); err == nil || !strings.Contains(errOut, "VM disk image") || !strings.Contains(errOut, "--vm") {
		t.Fatalf("a container from a disk image: %v %s", err, errOut)
	}
	if _, errOut, err := h.tandem("launch", "bootbios", "v0", "--vm", "-c", "vm.firmware=uefi"); err == nil || !strings.Contains(errOut, "boots with bios firmware") {
		t.Fatalf("a BIOS disk under UEFI: %v %s", err, errOut)
	}

	start := time.Now()
	h.must("launch", "bootbios", "v1", "--vm", "-c", "limits.memory=256MiB")
	waitConsole(t, h, "v1", marker+" firmware=bios", diskBootDeadline)
	t.Logf("launch to the disk's init: %v (SeaBIOS, SYSLINUX, TCG)", time.Since(start).Round(100*time.Millisecond))
	qemu := processesMentioning(filepath.Join(h.dir, "vm", "instances"))
	if len(qemu) != 1 || strings.Contains(qemu[0], " -kernel ") || strings.Contains(qemu[0], " -initrd ") {
		t.Errorf("want one QEMU booting the disk, no kernel of ours: %q", qemu)
	}

	for _, args := range [][]string{{"exec", "v1", "--", "true"}, {"file", "pull", "v1/etc/hostname", "-"}} {
		start := time.Now()
		_, errOut, err := h.tandem(args...)
		if err == nil || !strings.Contains(errOut, "no guest agent") {
			t.Errorf("%s: %v %q, want a no guest agent error", args[0], err, errOut)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s took %v to fail", args[0], d)
		}
	}

	// The daemon dies and comes back: the VM ran on, it did not boot again.
	before := lastTick(waitConsole(t, h, "v1", marker+" tick 2", time.Minute), marker)
	h.stop(syscall.SIGKILL)
	h.start()
	assertStatus(t, h, "v1", "Running")
	log := waitConsole(t, h, "v1", marker+" tick "+strconv.Itoa(before+2), time.Minute)
	if n := strings.Count(log, marker+" firmware="); n != 1 {
		t.Errorf("booted %d times across the daemon restart", n)
	}

	// This init ignores the power button: a graceful stop falls back to force after its timeout.
	start = time.Now()
	h.must("stop", "v1", "--timeout", "5")
	t.Logf("stop with a 5 s timeout took %v", time.Since(start).Round(100*time.Millisecond))
	assertStatus(t, h, "v1", "Stopped")
	h.must("start", "v1")
	for deadline := time.Now().Add(diskBootDeadline); ; time.Sleep(time.Second) {
		log, _, _ := h.tandem("console", "v1", "--show-log")
		if strings.Count(log, marker+" firmware=bios") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("v1 hung: no second boot within %v:\n%s", diskBootDeadline, tail(log, 3000))
		}
	}
	if b := bases(t, h); len(b) != 1 || !strings.HasSuffix(b[0], ".qcow2") {
		t.Errorf("base disks %v, want the image's disk in the default pool", b)
	}
	h.must("delete", "v1", "--force")
	if b := bases(t, h); len(b) != 0 {
		t.Errorf("base disks left after the last instance: %v", b)
	}
	h.must("image", "delete", "bootbios")
}

// A UEFI disk image (GRUB as EFI/BOOT/BOOTX64.EFI on a raw disk) boots under OVMF; two instances
// share the default pool's copy of it (converted to qcow2), which goes with the last of them.
func TestDiskImageUEFI(t *testing.T) {
	testenv.Require(t, realDrivers...)
	testenv.Require(t, imagetest.Components(image.FirmwareUEFI)...)
	testenv.Require(t, "ovmf")
	h := startHost(t, "--accel", "tcg", "--default-network=false")
	const marker = "UEFI-DISK-MARK"
	importBootDisk(t, h, imagetest.Disk{Firmware: image.FirmwareUEFI, Format: image.DiskRaw, Marker: marker}, "bootuefi")

	start := time.Now()
	h.must("launch", "bootuefi", "u1", "--vm") // GRUB needs more than 256 MiB: the default 512
	h.must("create", "bootuefi", "u2", "--vm", "-c", "vm.firmware=uefi")
	waitConsole(t, h, "u1", marker+" firmware=uefi", diskBootDeadline)
	t.Logf("launch to the disk's init: %v (OVMF, GRUB, TCG)", time.Since(start).Round(100*time.Millisecond))
	b := bases(t, h)
	if len(b) != 1 {
		t.Fatalf("base disks %v, want one disk shared by u1 and u2", b)
	}
	if _, errOut, err := h.tandem("exec", "u1", "--", "true"); err == nil || !strings.Contains(errOut, "no guest agent") {
		t.Errorf("exec: %v %q", err, errOut)
	}
	h.must("delete", "u2")
	if len(bases(t, h)) != 1 {
		t.Fatal("the base went while u1 uses it")
	}
	h.must("delete", "u1", "--force")
	if b := bases(t, h); len(b) != 0 {
		t.Errorf("base disks left after the last instance: %v", b)
	}
	h.must("image", "delete", "bootuefi")
}

// A VM booted from a disk image migrates like any other: the destination starts QEMU the same way
// (firmware boot, no kernel of ours, whose option ROM would not match the source's) and the guest's
// counter carries on there without a second boot.
func TestVMMigrateDiskImage(t *testing.T) {
	testenv.Require(t, vmtest.Components...)
	testenv.Require(t, imagetest.Components(image.FirmwareBIOS)...)
	const marker = "MIG-DISK-MARK"
	file, err := imagetest.Disk{Firmware: image.FirmwareBIOS, Marker: marker}.Image(testenv.Context(t, time.Minute), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store, img := imagetest.Store(t, file)
	cache, err := image.NewRootfsCache(store, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &vmMigHosts{t: t, dirsA: vmtest.NewDirs(t), dirsB: vmtest.NewDirs(t)}
	e.a, e.b = vmtest.NewDriver(t, e.dirsA, cache), vmtest.NewDriver(t, e.dirsB, cache)
	h := e.create(&driver.Spec{ID: uuid.NewString(), Name: "migdisk", Type: "vm", Image: img.Fingerprint,
		Config: map[string]string{"limits.memory": "256MiB"}})
	if err := e.a.Start(testenv.Context(t, time.Minute), h); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(diskBootDeadline); lastTick(vmMigRead(t, e.a.ConsoleLogPath(h)), marker) < 3; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("hung: no tick 3 within %v:\n%s", diskBootDeadline, tail(vmMigRead(t, e.a.ConsoleLogPath(h)), 3000))
		}
	}
	r := e.migrate(e.a, e.b, h, false, 0)
	t.Logf("migrated (%s): downtime %v, total %v, disk %d MiB", r.res.Mode, r.res.Downtime, r.res.TotalTime, r.res.DiskBytes>>20)
	vmMigWaitTicks(t, e.b.ConsoleLogPath(r.dst), lastTick(r.srcLog, marker)+2)
	dstLog := vmMigRead(t, e.b.ConsoleLogPath(r.dst))
	vmMigTicks(t, r.srcLog, dstLog)
	if strings.Contains(dstLog, marker+" firmware=") {
		t.Error("the guest booted again on the destination")
	}
	if err := e.b.Stop(testenv.Context(t, time.Minute), r.dst, driver.StopOpts{Force: true}); err != nil {
		t.Fatal(err)
	}
	vmMigHoldsNothing(t, e.dirsA, h.ID)
}
