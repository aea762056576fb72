// Package qemucmd builds a QEMU command line as data: a pure function from a Config to the argument
// list, so every profile (q35 Linux, microvm, Windows) is unit-tested without running QEMU.
package qemucmd

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Machine types.
const (
	Q35     = "q35"
	PC      = "pc"
	MicroVM = "microvm"
)

// Accelerators. Auto tries KVM and falls back to TCG.
const (
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
	AccelAuto = "auto"
)

// AgentPortName is the virtio-serial port the guest agent opens (/sys/class/virtio-ports/*/name).
const AgentPortName = "org.tandem.agent.0"

// AgentChardev is the id of the agent port's host side (QMP query-chardev names it so).
const AgentChardev = "agent"

// Config is everything that shapes the command line. Paths are host paths.
type Config struct {
	Name      string // guest name, shown by ps and QMP
	UUID      string // SMBIOS system UUID; "" for none
	Machine   string // q35 (default), pc or microvm
	Accel     string // kvm, tcg or auto (default)
	CPU       string // CPU model; "" = host under KVM, max otherwise
	VCPUs     int
	MemoryMiB int
	// MachineType pins a versioned type of Machine's family (pc-q35-7.2): a migration destination
	// must run the source's, which the bare alias only names on the same QEMU version. "" = latest.
	MachineType string

	// Direct kernel boot when Kernel is set; otherwise the firmware boots the first disk.
	Kernel, Initrd, Append string
	Firmware               Firmware

	Disks  []Disk   // the first is the boot disk
	CDROMs []string // ISO files, attached read-only (q35/pc)
	NICs   []NIC

	QMPSocket     string // required
	ConsoleSocket string // serial console; required
	ConsoleLog    string // everything the console prints, kept across client connections
	AgentSocket   string // virtio-serial port for the guest agent; "" for none
	PIDFile       string
	TPMSocket     string // swtpm data socket for a TPM 2.0; "" for none (q35 only)
	DebugConLog   string // firmware debug port 0x402 (OVMF) into this file; "" for none

	Windows      bool // RTC in local time and (under KVM) the Hyper-V enlightenments
	HotplugPorts int  // free pcie-root-ports for later hotplug (q35)
	StartPaused  bool // -S: vCPUs wait for QMP cont
	// Incoming waits for a migration stream instead of booting: "defer" lets QMP migrate-incoming
	// set the address after the capabilities.
	Incoming string
}

// Firmware selects UEFI when Code is set; the zero value is SeaBIOS (qboot on microvm).
type Firmware struct {
	Code       string // read-only OVMF code image
	Vars       string // this instance's writable copy of the OVMF variable store
	SecureBoot bool   // needs SMM and a secure pflash
}

// Disk is a block device backed by an image file.
type Disk struct {
	ID       string // device id; node names derive from it
	Path     string
	Format   string // qcow2 or raw
	ReadOnly bool
}

// NIC is a virtio-net device on a tap device or, for tests, QEMU's user-mode network.
type NIC struct {
	ID    string
	MAC   string
	Tap   string // host tap name; empty with User
	User  bool
	Vhost bool // vhost-net; hosts without /dev/vhost-net abort with it
}

// HyperV lists the Hyper-V enlightenments of the Windows profile.
var HyperV = []string{"hv_relaxed", "hv_vapic", "hv_spinlocks=0x1fff", "hv_vpindex", "hv_runtime", "hv_time",
	"hv_synic", "hv_stimer", "hv_frequencies", "hv_reset", "hv_tlbflush", "hv_ipi"}

// Sandbox is the seccomp policy QEMU runs under.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// Validate rejects combinations QEMU would refuse or that make no sense.
func (c *Config) Validate() error {
	switch c.machine() {
	case Q35, PC, MicroVM:
	default:
		return fmt.Errorf("unknown machine type %q (want q35, pc or microvm)", c.Machine)
	}
	switch c.accel() {
	case AccelKVM, AccelTCG, AccelAuto:
	default:
		return fmt.Errorf("unknown accelerator %q (want kvm, tcg or auto)", c.Accel)
	}
	if c.VCPUs < 1 || c.MemoryMiB < 16 {
		return fmt.Errorf("need at least 1 vCPU and 16 MiB (got %d, %d MiB)", c.VCPUs, c.MemoryMiB)
	}
	if c.QMPSocket == "" || c.ConsoleSocket == "" {
		return fmt.Errorf("QMP and console sockets are required")
	}
	if c.Kernel == "" && len(c.Disks) == 0 {
		return fmt.Errorf("nothing to boot: no kernel and no disk")
	}
	if t := c.MachineType; t != "" && !strings.HasPrefix(t, machinePrefix[c.machine()]) {
		return fmt.Errorf("machine type %q is not of the %s family", t, c.machine())
	}
	micro := c.machine() == MicroVM
	if micro && (c.Firmware.Code != "" || len(c.CDROMs) > 0 || c.TPMSocket != "" || c.HotplugPorts > 0 || c.Windows) {
		return fmt.Errorf("microvm has no UEFI, CD-ROM, TPM, hotplug or Windows support: use q35")
	}
	if micro && c.Kernel == "" {
		return fmt.Errorf("microvm boots only a kernel directly")
	}
	if c.Windows && (c.machine() != Q35 || c.Firmware.Code == "") {
		return fmt.Errorf("the Windows profile needs q35 and UEFI")
	}
	if c.Firmware.SecureBoot && c.machine() != Q35 {
		return fmt.Errorf("secure boot needs q35")
	}
	if c.Firmware.Code != "" && c.Firmware.Vars == "" {
		return fmt.Errorf("UEFI needs a variable store")
	}
	for _, n := range c.NICs {
		if n.User == (n.Tap != "") {
			return fmt.Errorf("nic %s: want exactly one of a tap or user-mode networking", n.ID)
		}
	}
	return nil
}

// machinePrefix is how the versioned types of each family start (pc-q35-7.2, pc-i440fx-7.2).
var machinePrefix = map[string]string{Q35: "pc-q35-", PC: "pc-i440fx-", MicroVM: "microvm"}

func (c *Config) machine() string {
	if c.Machine == "" {
		return Q35
	}
	return c.Machine
}

func (c *Config) accel() string {
	if c.Accel == "" {
		return AccelAuto
	}
	return c.Accel
}

// Build returns QEMU's arguments (without the binary).
func Build(c Config) ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	b := &builder{c: &c, bus: "-pci"}
	if c.machine() == MicroVM {
		b.bus = "-device" // virtio-mmio transports: virtio-blk-device, ...
	}
	b.add("-name", opts("guest="+esc(c.Name), "debug-threads=on"))
	if c.UUID != "" {
		b.add("-uuid", c.UUID)
	}
	b.machineArgs()
	b.add("-m", strconv.Itoa(c.MemoryMiB), "-smp", strconv.Itoa(c.VCPUs))
	b.add("-nodefaults", "-no-user-config", "-display", "none")
	b.add("-sandbox", Sandbox)
	b.add("-msg", "timestamp=on")
	if c.PIDFile != "" {
		b.add("-pidfile", c.PIDFile)
	}
	if c.StartPaused {
		b.add("-S")
	}
	if c.Incoming != "" {
		b.add("-incoming", c.Incoming)
	}
	b.add("-chardev", opts("socket", "id=qmp", "path="+esc(c.QMPSocket), "server=on", "wait=off"),
		"-mon", "chardev=qmp,mode=control")
	console := []string{"socket", "id=serial0", "path=" + esc(c.ConsoleSocket), "server=on", "wait=off"}
	if c.ConsoleLog != "" {
		console = append(console, "logfile="+esc(c.ConsoleLog), "logappend=on")
	}
	b.add("-chardev", opts(console...), "-serial", "chardev:serial0")
	if c.Windows {
		b.add("-rtc", "base=localtime,driftfix=slew")
	} else {
		b.add("-rtc", "base=utc")
	}
	b.bootArgs()
	b.diskArgs()
	b.nicArgs()
	b.deviceArgs()
	return b.args, nil
}

type builder struct {
	c     *Config
	bus   string // device name suffix: -pci or -device (mmio)
	args  []string
	ports int // pcie-root-ports made for boot devices so far
}

// BootPort is the id of the pcie-root-port that holds the boot device id on q35.
func BootPort(id string) string { return "port-" + id }

// bootBus returns the bus option of a boot-time disk or NIC, adding its port first. On q35 each
// gets a pcie-root-port of its own: devices straight on pcie.0 cannot be unplugged ("Bus 'pcie.0'
// does not support hotplugging"). pc's pci.0 hot-unplugs through ACPI, and microvm cannot at all,
// so they need none. Chassis numbers follow the free hotplug ports' (1..HotplugPorts).
func (b *builder) bootBus(id string) []string {
	if b.c.machine() != Q35 {
		return nil
	}
	b.ports++
	port := BootPort(id)
	b.add("-device", fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d", port, b.c.HotplugPorts+b.ports))
	return []string{"bus=" + port}
}

func (b *builder) add(a ...string) { b.args = append(b.args, a...) }

func (b *builder) machineArgs() {
	c := b.c
	m := []string{c.machine()}
	if c.MachineType != "" {
		m[0] = c.MachineType
	}
	if c.Firmware.SecureBoot {
		m = append(m, "smm=on")
	}
	b.add("-machine", opts(m...))
	switch c.accel() {
	case AccelKVM:
		b.add("-accel", "kvm")
	case AccelTCG:
		b.add("-accel", "tcg,thread=multi")
	default: // QEMU tries each -accel in order
		b.add("-accel", "kvm", "-accel", "tcg,thread=multi")
	}
	cpu := c.CPU
	if cpu == "" {
		cpu = "max" // host under KVM, everything TCG emulates otherwise
		if c.accel() == AccelKVM {
			cpu = "host"
		}
	}
	// Hyper-V enlightenments are KVM paravirtualisation: under TCG QEMU refuses hv_vpindex and its
	// dependants, and the rest would only cost, so they come with KVM alone.
	if c.Windows && c.accel() == AccelKVM {
		cpu = opts(append([]string{cpu}, HyperV...)...)
	}
	b.add("-cpu", cpu)
	if c.Firmware.SecureBoot {
		b.add("-global", "driver=cfi.pflash01,property=secure,value=on")
	}
	if c.Windows && c.accel() == AccelKVM {
		b.add("-global", "kvm-pit.lost_tick_policy=delay")
	}
}

func (b *builder) bootArgs() {
	c := b.c
	if fw := c.Firmware; fw.Code != "" {
		b.add("-drive", opts("if=pflash", "format=raw", "unit=0", "file="+esc(fw.Code), "readonly=on"),
			"-drive", opts("if=pflash", "format=raw", "unit=1", "file="+esc(fw.Vars)))
	}
	if c.Kernel != "" {
		b.add("-kernel", c.Kernel)
		if c.Initrd != "" {
			b.add("-initrd", c.Initrd)
		}
		if c.Append != "" {
			b.add("-append", c.Append)
		}
	}
	if c.DebugConLog != "" {
		b.add("-chardev", opts("file", "id=debugcon", "path="+esc(c.DebugConLog)),
			"-device", "isa-debugcon,iobase=0x402,chardev=debugcon")
	}
}

func (b *builder) diskArgs() {
	for i, d := range b.c.Disks {
		format := d.Format
		if format == "" {
			format = "qcow2"
		}
		node := map[string]any{
			"driver": format, "node-name": "fmt-" + d.ID, "discard": "unmap",
			"file": map[string]any{"driver": "file", "node-name": "file-" + d.ID, "filename": d.Path,
				"aio": "threads", "discard": "unmap"},
		}
		if d.ReadOnly {
			node["read-only"] = true
			node["file"].(map[string]any)["read-only"] = true
		}
		dev := append([]string{"virtio-blk" + b.bus, "id=" + d.ID, "drive=fmt-" + d.ID}, b.bootBus(d.ID)...)
		if i == 0 && b.c.machine() != MicroVM {
			dev = append(dev, "bootindex=1")
		}
		b.add("-blockdev", jsonArg(node), "-device", opts(dev...))
	}
	for i, iso := range b.c.CDROMs {
		id := fmt.Sprintf("cdrom%d", i)
		node := map[string]any{"driver": "raw", "node-name": "fmt-" + id, "read-only": true,
			"file": map[string]any{"driver": "file", "node-name": "file-" + id, "filename": iso, "read-only": true}}
		bus := fmt.Sprintf("ide.%d", i+2) // q35's AHCI has ide.0-5; pc's PIIX ide.0-1
		if b.c.machine() == PC {
			bus = fmt.Sprintf("ide.%d", i%2)
		}
		b.add("-blockdev", jsonArg(node), "-device", opts("ide-cd", "id="+id, "drive=fmt-"+id, "bus="+bus))
	}
}

func (b *builder) nicArgs() {
	for _, n := range b.c.NICs {
		if n.User {
			b.add("-netdev", opts("user", "id=net-"+n.ID))
		} else {
			vhost := "vhost=off"
			if n.Vhost {
				vhost = "vhost=on"
			}
			b.add("-netdev", opts("tap", "id=net-"+n.ID, "ifname="+esc(n.Tap), "script=no", "downscript=no", vhost))
		}
		dev := append([]string{"virtio-net" + b.bus, "id=" + n.ID, "netdev=net-" + n.ID, "mac=" + n.MAC}, b.bootBus(n.ID)...)
		if b.bus == "-pci" {
			dev = append(dev, "romfile=") // no iPXE ROM: we never network-boot, and it costs boot time
		}
		b.add("-device", opts(dev...))
	}
}

func (b *builder) deviceArgs() {
	c := b.c
	b.add("-object", "rng-random,id=rng0,filename=/dev/urandom",
		"-device", opts("virtio-rng"+b.bus, "id=rng", "rng=rng0"))
	// Free page reporting hands pages the guest frees back to the host.
	b.add("-device", opts("virtio-balloon"+b.bus, "id=balloon", "free-page-reporting=on"))
	if c.AgentSocket != "" {
		b.add("-device", opts("virtio-serial"+b.bus, "id=vserial"),
			"-chardev", opts("socket", "id="+AgentChardev, "path="+esc(c.AgentSocket), "server=on", "wait=off"),
			"-device", opts("virtserialport", "bus=vserial.0", "nr=1", "chardev="+AgentChardev, "name="+AgentPortName))
	}
	if c.TPMSocket != "" {
		b.add("-chardev", opts("socket", "id=tpm", "path="+esc(c.TPMSocket)),
			"-tpmdev", "emulator,id=tpm0,chardev=tpm",
			"-device", "tpm-crb,tpmdev=tpm0")
	}
	if c.machine() == Q35 {
		for i := 0; i < c.HotplugPorts; i++ {
			b.add("-device", fmt.Sprintf("pcie-root-port,id=hotplug%d,bus=pcie.0,chassis=%d", i, i+1))
		}
	}
}

// esc doubles commas: QEMU's option syntax splits on single commas.
func esc(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func opts(parts ...string) string { return strings.Join(parts, ",") }

// jsonArg encodes a -blockdev in QEMU's JSON syntax, which needs no comma escaping of paths.
func jsonArg(v any) string {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of strings and bools always encode
	}
	return string(raw)
}
