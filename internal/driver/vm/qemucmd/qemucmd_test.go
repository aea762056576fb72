package qemucmd

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files from the current output")

func base(machine string) Config {
	run, dir := "/run/tandem/vm/i1", "/var/lib/tandem/vm/i1"
	return Config{
		Name: "v1", UUID: "6f1c5a7e-0000-4000-8000-000000000001", Machine: machine, Accel: AccelTCG,
		VCPUs: 2, MemoryMiB: 512,
		Disks:         []Disk{{ID: "root", Path: dir + "/root.qcow2", Format: "qcow2"}},
		QMPSocket:     run + "/qmp.sock",
		ConsoleSocket: run + "/console.sock",
		ConsoleLog:    dir + "/console.log",
		AgentSocket:   run + "/agent.sock",
		PIDFile:       run + "/qemu.pid",
		StartPaused:   true,
	}
}

func profiles() map[string]Config {
	q35 := base(Q35)
	q35.Kernel, q35.Initrd = "/usr/local/share/tandem/guest/vmlinux", "/var/lib/tandem/vm/boot/initramfs-abc.cpio"
	q35.Append = KernelArgs(Q35, 0, "tandem.root=/dev/vda")
	q35.NICs = []NIC{{ID: "eth0", MAC: "00:16:3e:00:00:01", Tap: "tnd1a2b3c"}}
	q35.HotplugPorts = 4

	micro := base(MicroVM)
	micro.Kernel, micro.Initrd = q35.Kernel, q35.Initrd
	micro.Append = KernelArgs(MicroVM, 2793438, "tandem.root=/dev/vda")
	micro.NICs = []NIC{{ID: "eth0", MAC: "00:16:3e:00:00:02", User: true}}

	pc := base(PC)
	pc.Accel = AccelAuto
	pc.Kernel, pc.Append = q35.Kernel, "console=ttyS0"

	uefi := base(Q35)
	uefi.Firmware = Firmware{Code: "/usr/share/OVMF/OVMF_CODE_4M.fd", Vars: "/var/lib/tandem/vm/i1/ovmf-vars.fd"}
	uefi.DebugConLog = "/var/lib/tandem/vm/i1/firmware.log"

	win := base(Q35)
	win.Accel = AccelKVM
	win.Windows = true
	win.AgentSocket = ""
	win.Firmware = Firmware{Code: "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", Vars: "/var/lib/tandem/vm/i1/ovmf-vars.fd", SecureBoot: true}
	win.TPMSocket = "/run/tandem/vm/i1/tpm.sock"
	win.CDROMs = []string{"/srv/iso/virtio-win.iso"}
	win.NICs = []NIC{{ID: "eth0", MAC: "00:16:3e:00:00:03", Tap: "tnd1a2b3c", Vhost: true}}
	win.HotplugPorts = 2

	winTCG := win
	winTCG.Accel = AccelTCG

	// A disk image boots its own loader: SeaBIOS or OVMF reads the overlay (over the image's disk),
	// no -kernel; the agent port stays for an image that brings tandem-agent.
	diskBIOS := base(Q35)
	diskBIOS.NICs = []NIC{{ID: "eth0", MAC: "00:16:3e:00:00:04", User: true}}
	diskBIOS.HotplugPorts = 4

	diskUEFI := base(PC)
	diskUEFI.Firmware = uefi.Firmware
	diskUEFI.DebugConLog = uefi.DebugConLog
	diskUEFI.NICs = []NIC{{ID: "eth0", MAC: "00:16:3e:00:00:05", Tap: "tnd4d5e6f"}}

	return map[string]Config{"q35-linux": q35, "microvm": micro, "pc-auto": pc, "q35-uefi": uefi,
		"windows": win, "windows-tcg": winTCG, "q35-disk-bios": diskBIOS, "pc-disk-uefi": diskUEFI}
}

// The golden files hold one argument per line; run with -update after an intended change and review the diff.
func TestGolden(t *testing.T) {
	for name, cfg := range profiles() {
		t.Run(name, func(t *testing.T) {
			args, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(args, "\n") + "\n"
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("args differ from %s (go test -update rewrites it):\n%s", path, lineDiff(string(want), got))
			}
		})
	}
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for i := 0; i < max(len(w), len(g)); i++ {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			out = append(out, "line "+strconv.Itoa(i+1)+":\n  want "+a+"\n  got  "+b)
		}
	}
	return strings.Join(out, "\n")
}

// values returns the arguments that follow each occurrence of flag.
func values(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestProfilesAsData(t *testing.T) {
	p := profiles()
	build := func(c Config) []string {
		args, err := Build(c)
		if err != nil {
			t.Fatal(err)
		}
		return args
	}

	q := build(p["q35-linux"])
	if got := values(q, "-sandbox"); !slices.Equal(got, []string{Sandbox}) {
		t.Errorf("sandbox %q", got)
	}
	for _, f := range []string{"-nodefaults", "-no-user-config", "-S"} {
		if !slices.Contains(q, f) {
			t.Errorf("q35 lacks %s", f)
		}
	}
	if ports := strings.Count(strings.Join(values(q, "-device"), "\n"), "pcie-root-port"); ports != 4+2 {
		t.Errorf("q35 has %d root ports, want 4 free and one for each boot disk and NIC", ports)
	}
	// Boot devices sit on ports of their own: on pcie.0 they could never be unplugged.
	for _, want := range []string{"pcie-root-port,id=port-root,bus=pcie.0,chassis=5",
		"virtio-blk-pci,id=root,drive=fmt-root,bus=port-root,bootindex=1",
		"pcie-root-port,id=port-eth0,bus=pcie.0,chassis=6",
		"virtio-net-pci,id=eth0,netdev=net-eth0,mac=00:16:3e:00:00:01,bus=port-eth0,romfile="} {
		if !slices.Contains(values(q, "-device"), want) {
			t.Errorf("q35 lacks -device %s: %q", want, values(q, "-device"))
		}
	}
	for _, name := range []string{"pc-auto", "pc-disk-uefi", "microvm"} {
		if d := strings.Join(values(build(p[name]), "-device"), "\n"); strings.Contains(d, "root-port") || strings.Contains(d, "bus=port-") {
			t.Errorf("%s has root ports (its bus hot-unplugs, or nothing does): %s", name, d)
		}
	}
	if !slices.Contains(values(q, "-device"), "virtio-balloon-pci,id=balloon,free-page-reporting=on") {
		t.Error("q35 has no free-page-reporting balloon")
	}

	m := build(p["microvm"])
	app := values(m, "-append")[0]
	for _, want := range []string{"tsc_early_khz=2793438", "pci=off", "console=ttyS0"} {
		if !strings.Contains(app, want) {
			t.Errorf("microvm append %q lacks %s", app, want)
		}
	}
	for _, d := range values(m, "-device") {
		if strings.Contains(d, "-pci") {
			t.Errorf("microvm has a PCI device %q", d)
		}
	}

	for name, root := range map[string]string{"q35-disk-bios": "virtio-blk-pci,id=root,drive=fmt-root,bus=port-root,bootindex=1",
		"pc-disk-uefi": "virtio-blk-pci,id=root,drive=fmt-root,bootindex=1"} {
		a := build(p[name])
		if slices.Contains(a, "-kernel") || slices.Contains(a, "-initrd") || slices.Contains(a, "-append") {
			t.Errorf("%s boots a kernel of ours: %q", name, a)
		}
		if !slices.Contains(values(a, "-device"), root) {
			t.Errorf("%s: the firmware is not pointed at the root disk: %q", name, values(a, "-device"))
		}
	}
	if pf := values(build(p["pc-disk-uefi"]), "-drive"); len(pf) != 2 || !strings.Contains(pf[0], "OVMF_CODE_4M.fd") {
		t.Errorf("pc-disk-uefi pflash %q", pf)
	}

	w := build(p["windows"])
	cpu := values(w, "-cpu")[0]
	if cpu != "host,"+strings.Join(HyperV, ",") {
		t.Errorf("windows cpu %q", cpu)
	}
	if rtc := values(w, "-rtc")[0]; !strings.HasPrefix(rtc, "base=localtime") {
		t.Errorf("windows rtc %q", rtc)
	}
	if !slices.Contains(values(w, "-device"), "tpm-crb,tpmdev=tpm0") {
		t.Error("windows has no TPM")
	}
	if !slices.Contains(values(w, "-device"), "ide-cd,id=cdrom0,drive=fmt-cdrom0,bus=ide.2") {
		t.Errorf("windows has no driver CD-ROM: %q", values(w, "-device"))
	}
	if cpu := values(build(p["windows-tcg"]), "-cpu")[0]; cpu != "max" {
		t.Errorf("windows under TCG: cpu %q, want max without Hyper-V flags", cpu)
	}
}

func TestEscapesCommas(t *testing.T) {
	c := base(Q35)
	c.Kernel = "/k"
	c.ConsoleSocket = "/run/a,b/console.sock"
	args, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(args, " "), "path=/run/a,,b/console.sock") {
		t.Errorf("comma not escaped: %q", args)
	}
}

func TestValidate(t *testing.T) {
	bad := map[string]func(*Config){
		"machine":        func(c *Config) { c.Machine = "isapc" },
		"accel":          func(c *Config) { c.Accel = "hvf" },
		"no memory":      func(c *Config) { c.MemoryMiB = 0 },
		"microvm uefi":   func(c *Config) { c.Machine = MicroVM; c.Kernel = "/k"; c.Firmware = Firmware{Code: "c", Vars: "v"} },
		"microvm disk":   func(c *Config) { c.Machine = MicroVM },
		"windows on pc":  func(c *Config) { c.Machine = PC; c.Windows = true },
		"nic both":       func(c *Config) { c.NICs = []NIC{{ID: "n", Tap: "t", User: true}} },
		"uefi no vars":   func(c *Config) { c.Firmware = Firmware{Code: "c"} },
		"no qmp":         func(c *Config) { c.QMPSocket = "" },
		"nothing to run": func(c *Config) { c.Disks = nil },
	}
	for name, mutate := range bad {
		c := base(Q35)
		mutate(&c)
		if _, err := Build(c); err == nil {
			t.Errorf("%s: Build accepted it", name)
		}
	}
}
