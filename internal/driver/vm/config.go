package vm

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
	"tandem/internal/units"
)

// Config keys this driver reads besides limits.cpu, limits.memory and image.os.
const (
	KeyMachine   = "vm.machine"         // q35 (default), pc or microvm; fixed at create
	KeyFirmware  = "vm.firmware"        // bios (default) or uefi; fixed at create
	KeyDriverISO = "windows.driver_iso" // an ISO attached as a CD-ROM (virtio drivers for the installer)
	// KeyDiskDir puts the root disk in this directory (a shared pool's mount) as <dir>/<id>.qcow2
	// instead of the instance dir; fixed at create. Such a disk is self-contained (see Create).
	KeyDiskDir = "vm.disk_dir"
)

// Defaults when limits are unset.
const (
	defaultMemoryMiB        = 512
	defaultWindowsMemoryMiB = 4096
)

// instanceConfig is what Create decides once and persists in instance.json.
type instanceConfig struct {
	Name     string `json:"name"`
	Image    string `json:"image"`
	Machine  string `json:"machine"`
	Firmware string `json:"firmware"` // bios or uefi
	Windows  bool   `json:"windows,omitempty"`
	Base     string `json:"base"` // base disk under the overlay
	// DiskBoot: the root disk is a disk image's and the firmware boots its own boot loader; no
	// kernel or initramfs of ours, so no guest agent unless the image brings one.
	DiskBoot bool `json:"disk_boot,omitempty"`
	// KernelCmdline is the image's default, appended to ours.
	KernelCmdline string `json:"kernel_cmdline,omitempty"`
	// Disk is the root disk's path when it is not the instance dir's root.qcow2 (a shared pool).
	Disk string `json:"disk,omitempty"`
	// PoolDisk: Disk is a root disk on a storage pool (Spec.Root), which the control plane owns.
	PoolDisk   bool   `json:"pool_disk,omitempty"`
	DiskFormat string `json:"disk_format,omitempty"` // "" is qcow2
	// MachineType pins a versioned machine type (pc-q35-7.2); set on migration destinations.
	MachineType string `json:"machine_type,omitempty"`
	// Incoming is set while an incoming migration is unfinished, Outgoing once an outgoing one
	// completed and until it is aborted: migShared or migMirror. A shared disk is then not ours
	// to delete.
	Incoming string `json:"incoming,omitempty"`
	Outgoing string `json:"outgoing,omitempty"`
	// OutgoingPaused: the guest was paused before it migrated, so AbortOutgoing leaves it paused.
	OutgoingPaused bool `json:"outgoing_paused,omitempty"`
	// SavedState: a stateful stop saved the guest (savestate.go); the next start loads it.
	SavedState bool `json:"saved_state,omitempty"`
}

// Migration disk modes.
const (
	migShared = "shared" // both hosts open the same disk file
	migMirror = "mirror" // the destination's own disk, filled over NBD
)

// diskPath is where the instance's root disk lives.
func (c *instanceConfig) diskPath(p paths) string {
	if c.Disk != "" {
		return c.Disk
	}
	return p.overlay
}

// ownsDisk says whether deleting the instance deletes a disk outside its dir: not while another
// host runs from, or is about to take over, the same shared file.
func (c *instanceConfig) ownsDisk() bool {
	return c.Disk != "" && !c.PoolDisk && c.Incoming != migShared && c.Outgoing != migShared
}

func (c *instanceConfig) diskFormat() string {
	if c.DiskFormat != "" {
		return c.DiskFormat
	}
	return "qcow2"
}

// decideHardware reads the create-time keys.
func decideHardware(spec *driver.Spec, info driver.ImageInfo) (instanceConfig, error) {
	c := instanceConfig{Name: spec.Name, Image: spec.Image, Machine: qemucmd.Q35, Firmware: "bios",
		KernelCmdline: info.KernelCmdline}
	guestOS := spec.Config["image.os"]
	if guestOS == "" {
		guestOS = info.OS
	}
	c.Windows = strings.EqualFold(guestOS, "windows")
	if m := spec.Config[KeyMachine]; m != "" {
		c.Machine = m
	}
	switch c.Machine {
	case qemucmd.Q35, qemucmd.PC, qemucmd.MicroVM:
	default:
		return c, errdefs.Invalid("%s %q: want q35, pc or microvm", KeyMachine, c.Machine)
	}
	if f := spec.Config[KeyFirmware]; f != "" {
		c.Firmware = f
	}
	if c.Firmware != "bios" && c.Firmware != "uefi" {
		return c, errdefs.Invalid("%s %q: want bios or uefi", KeyFirmware, c.Firmware)
	}
	if info.DiskFormat != "" {
		if err := c.bootsDisk(spec, info); err != nil {
			return c, err
		}
	}
	if c.Windows {
		if c.Machine != qemucmd.Q35 || c.Firmware == "bios" && (spec.Config[KeyFirmware] != "" || c.DiskBoot) {
			return c, errdefs.Invalid("a Windows VM needs q35 and UEFI")
		}
		c.Firmware = "uefi"
	}
	if c.Machine == qemucmd.MicroVM && c.Firmware == "uefi" {
		return c, errdefs.Invalid("microvm has no UEFI: use %s=q35", KeyMachine)
	}
	return c, nil
}

// bootsDisk takes a disk image's firmware: its boot loader was made for one, so the image decides
// and a vm.firmware that says otherwise is an error rather than a VM that never boots.
func (c *instanceConfig) bootsDisk(spec *driver.Spec, info driver.ImageInfo) error {
	want := info.Firmware
	if want != "bios" && want != "uefi" {
		return errdefs.Invalid("disk image %s does not say whether it boots with bios or uefi", shortFP(info.Fingerprint))
	}
	if set := spec.Config[KeyFirmware]; set != "" && set != want {
		return errdefs.Invalid("disk image %s boots with %s firmware: %s=%s cannot boot it (unset it or set %s)",
			shortFP(info.Fingerprint), want, KeyFirmware, set, want)
	}
	if c.Machine == qemucmd.MicroVM {
		return errdefs.Invalid("microvm has no firmware to boot a disk image: use %s=q35 or pc", KeyMachine)
	}
	c.Firmware, c.DiskBoot, c.KernelCmdline = want, true, ""
	return nil
}

func shortFP(fp string) string { return fp[:min(len(fp), 12)] }

// sizing reads the start-time limits.
func sizing(spec *driver.Spec, windows bool) (vcpus, memMiB int, err error) {
	vcpus, memMiB = 1, defaultMemoryMiB
	if windows {
		vcpus, memMiB = 2, defaultWindowsMemoryMiB
	}
	if v := spec.Config["limits.cpu"]; v != "" {
		if vcpus = cpuCount(v); vcpus < 1 || vcpus > 255 {
			return 0, 0, errdefs.Invalid("limits.cpu %q: want 1-255 vCPUs or a CPU set", v)
		}
	}
	if v := spec.Config["limits.memory"]; v != "" {
		b, perr := units.ParseSize(v)
		if perr != nil || b < 32<<20 {
			return 0, 0, errdefs.Invalid("limits.memory %q: a VM needs at least 32MiB", v)
		}
		memMiB = int(b >> 20)
	}
	return vcpus, memMiB, nil
}

// cpuCount reads "4" as four vCPUs and a set like "0-3,6" as its size (pinning comes later).
func cpuCount(v string) int {
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	n := 0
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}

// nicDevices returns the spec's nic device names, sorted so that eth0, eth1... stay stable.
func nicDevices(spec *driver.Spec) []string {
	var names []string
	for name, dev := range spec.Devices {
		if dev["type"] == "nic" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// macFor is the device's hwaddr, or a stable address under the 00:16:3e prefix derived from the
// instance and NIC, so a guest keeps its DHCP lease across restarts.
func macFor(id, nic string, dev map[string]string) string {
	if m := dev["hwaddr"]; m != "" {
		return strings.ToLower(m)
	}
	h := sha256.Sum256([]byte(id + "/" + nic))
	return fmt.Sprintf("00:16:3e:%02x:%02x:%02x", h[0]&0x7f, h[1], h[2])
}

// hostTSCKHz is the host's TSC rate, which a TCG guest's TSC runs at (QEMU reads the host TSC).
func hostTSCKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return int(mhz * 1000)
		}
	}
	return 0
}

// resolveAccel turns auto into kvm when /dev/kvm can be opened, tcg otherwise. QEMU could fall back
// by itself, but the command line differs (Hyper-V flags, CPU model) so we decide first.
func resolveAccel(accel string) string {
	if accel == qemucmd.AccelKVM || accel == qemucmd.AccelTCG {
		return accel
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return qemucmd.AccelTCG
	}
	f.Close()
	return qemucmd.AccelKVM
}
