package vm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/qmp/qmptest"
	"tandem/internal/testenv"
)

func diskInfo(firmware string) driver.ImageInfo {
	return driver.ImageInfo{Fingerprint: "f00dfeedbeef0123", OS: "marker", DiskFormat: "raw", Firmware: firmware,
		KernelCmdline: "ignored=1"}
}

// A disk image's firmware decides; a vm.firmware that disagrees, microvm, or a BIOS Windows disk is refused.
func TestDiskImageFirmware(t *testing.T) {
	for _, c := range []struct {
		config map[string]string
		info   driver.ImageInfo
		want   string // firmware, or "" for an error
		err    string
	}{
		{nil, diskInfo("bios"), "bios", ""},
		{nil, diskInfo("uefi"), "uefi", ""},
		{map[string]string{KeyFirmware: "uefi"}, diskInfo("uefi"), "uefi", ""},
		{map[string]string{KeyMachine: "pc"}, diskInfo("uefi"), "uefi", ""},
		{map[string]string{KeyFirmware: "uefi"}, diskInfo("bios"), "", "boots with bios firmware: vm.firmware=uefi cannot boot it"},
		{map[string]string{KeyFirmware: "bios"}, diskInfo("uefi"), "", "boots with uefi firmware"},
		{map[string]string{KeyMachine: "microvm"}, diskInfo("bios"), "", "microvm has no firmware"},
		{map[string]string{"image.os": "windows"}, diskInfo("bios"), "", "Windows VM needs q35 and UEFI"},
		{map[string]string{"image.os": "windows"}, diskInfo("uefi"), "uefi", ""},
		{nil, diskInfo(""), "", "does not say whether it boots with bios or uefi"},
	} {
		cfg, err := decideHardware(spec(c.config), c.info)
		if c.want == "" {
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%v with a %q disk: %v, want invalid argument with %q", c.config, c.info.Firmware, err, c.err)
			}
			continue
		}
		if err != nil || cfg.Firmware != c.want || !cfg.DiskBoot || cfg.KernelCmdline != "" {
			t.Errorf("%v with a %q disk: %+v %v", c.config, c.info.Firmware, cfg, err)
		}
	}
	if cfg, _ := decideHardware(spec(nil), driver.ImageInfo{OS: "busybox"}); cfg.DiskBoot {
		t.Error("a rootfs image boots as a disk image")
	}
}

// diskImages hands out a small raw disk and fails the test if anything asks for a rootfs.
type diskImages struct {
	t        *testing.T
	info     driver.ImageInfo
	extracts int
}

func (i *diskImages) Rootfs(context.Context, string) (string, driver.ImageInfo, error) {
	i.t.Error("a disk image was asked for its rootfs")
	return "", driver.ImageInfo{}, errdefs.Invalid("no rootfs")
}

func (i *diskImages) Describe(context.Context, string) (driver.ImageInfo, error) { return i.info, nil }

func (i *diskImages) ExtractDisk(_ context.Context, _, out string) (string, error) {
	i.extracts++
	return "raw", os.WriteFile(out, make([]byte, 1<<20), 0o644)
}

// Instances of a disk image share one base, extracted once, under overlays that name it raw; the
// base goes with the last of them. Start boots it through the firmware, with no kernel of ours.
func TestDiskImageSharedBase(t *testing.T) {
	testenv.Require(t, "qemu-img")
	run, err := os.MkdirTemp("", "tvmd")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(run)
	ovmf := t.TempDir()
	os.WriteFile(filepath.Join(ovmf, "OVMF_VARS_4M.fd"), []byte("vars"), 0o644)
	imgs := &diskImages{t: t, info: diskInfo("uefi")}
	d, err := New(Options{Dir: t.TempDir(), RunDir: run, Images: imgs, OVMFDir: ovmf, UserNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	var hs []*driver.Handle
	for _, name := range []string{"d1", "d2"} {
		h, err := d.Create(testenv.Context(t, time.Minute), &driver.Spec{ID: uuid.NewString(), Name: name, Type: "vm", Image: "marker"})
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	if imgs.extracts != 1 {
		t.Errorf("disk extracted %d times, want once", imgs.extracts)
	}
	bases, _ := filepath.Glob(filepath.Join(d.opts.Dir, "bases", "*"))
	if len(bases) != 1 || !strings.HasSuffix(bases[0], ".raw") {
		t.Fatalf("bases %v, want one .raw", bases)
	}
	p := d.paths(hs[0].ID)
	cfg, _ := loadConfig(p)
	if !cfg.DiskBoot || cfg.Firmware != "uefi" || cfg.Base != bases[0] {
		t.Errorf("config %+v", cfg)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", p.overlay).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
		Format  string `json:"backing-filename-format"`
	}
	json.Unmarshal(out, &info)
	if info.Backing != bases[0] || info.Format != "raw" {
		t.Errorf("overlay backed by %q (%s)", info.Backing, info.Format)
	}
	if _, err := os.Stat(p.vars); err != nil {
		t.Errorf("no UEFI variable store: %v", err)
	}
	qc, err := d.qemuConfig(testenv.Context(t, time.Minute), hs[0], cfg, p)
	if err != nil {
		t.Fatal(err)
	}
	if qc.Kernel != "" || qc.Initrd != "" || qc.Firmware.Code == "" || qc.Firmware.Vars != p.vars || qc.Disks[0].Path != p.overlay {
		t.Errorf("qemu config boots %q/%q with firmware %+v from %+v", qc.Kernel, qc.Initrd, qc.Firmware, qc.Disks)
	}

	if err := d.Delete(testenv.Context(t, time.Minute), hs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bases[0]); err != nil {
		t.Fatalf("base gone while d2 uses it: %v", err)
	}
	if err := d.Delete(testenv.Context(t, time.Minute), hs[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bases[0]); !os.IsNotExist(err) {
		t.Errorf("base left after its last instance: %v", err)
	}
}

// Exec in a disk-image VM whose guest holds no agent port fails at once, saying so.
func TestDiskImageNoAgentFailsFast(t *testing.T) {
	f := newFakeVM(t, qmptest.Expect("query-chardev").Return([]map[string]any{
		{"label": "serial0", "filename": "unix:console.sock", "frontend-open": true},
		{"label": "agent", "filename": "unix:agent.sock", "frontend-open": false},
	}))
	if err := writeJSON(f.p.config, instanceConfig{Name: "f1", Machine: "q35", Firmware: "bios", DiskBoot: true}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := f.d.Exec(testenv.Context(t, time.Minute), f.h, ExecRequest{Cmd: []string{"true"}})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "no guest agent") {
		t.Fatalf("exec: %v, want unavailable: no guest agent", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %v to say so", d)
	}
}
