package vm

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"tandem/internal/agent"
	"tandem/internal/driver"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
)

func spec(config map[string]string) *driver.Spec {
	return &driver.Spec{ID: "i", Name: "n", Config: config}
}

func TestDecideHardware(t *testing.T) {
	c, err := decideHardware(spec(nil), driver.ImageInfo{OS: "busybox", KernelCmdline: "console=ttyS0"})
	if err != nil || c.Machine != "q35" || c.Firmware != "bios" || c.Windows || c.KernelCmdline != "console=ttyS0" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, _ = decideHardware(spec(map[string]string{"image.os": "windows"}), driver.ImageInfo{})
	if !c.Windows || c.Firmware != "uefi" || c.Machine != "q35" {
		t.Fatalf("windows by config: %+v", c)
	}
	c, _ = decideHardware(spec(nil), driver.ImageInfo{OS: "Windows"})
	if !c.Windows {
		t.Fatal("windows from image metadata not seen")
	}
	for _, bad := range []map[string]string{
		{KeyMachine: "isapc"}, {KeyFirmware: "coreboot"},
		{KeyMachine: "microvm", KeyFirmware: "uefi"},
		{"image.os": "windows", KeyMachine: "pc"}, {"image.os": "windows", KeyFirmware: "bios"},
	} {
		if _, err := decideHardware(spec(bad), driver.ImageInfo{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%v: want invalid argument, got %v", bad, err)
		}
	}
}

func TestSizing(t *testing.T) {
	v, m, err := sizing(spec(nil), false)
	if err != nil || v != 1 || m != defaultMemoryMiB {
		t.Fatalf("defaults %d %d %v", v, m, err)
	}
	v, m, _ = sizing(spec(map[string]string{"limits.cpu": "0-3,6", "limits.memory": "1GiB"}), false)
	if v != 5 || m != 1024 {
		t.Fatalf("cpu set and memory: %d %d", v, m)
	}
	for _, bad := range []map[string]string{{"limits.cpu": "x"}, {"limits.cpu": "0"}, {"limits.memory": "1MiB"}, {"limits.memory": "lots"}} {
		if _, _, err := sizing(spec(bad), false); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

var macRE = regexp.MustCompile(`^00:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}$`)

func TestMACStableAndLocal(t *testing.T) {
	a, b := macFor("id1", "eth0", nil), macFor("id1", "eth0", nil)
	if a != b || !macRE.MatchString(a) {
		t.Fatalf("mac %q %q", a, b)
	}
	if macFor("id2", "eth0", nil) == a || macFor("id1", "eth1", nil) == a {
		t.Error("macs collide across instances or nics")
	}
	if m := macFor("id1", "eth0", map[string]string{"hwaddr": "00:16:3E:AA:BB:CC"}); m != "00:16:3e:aa:bb:cc" {
		t.Errorf("hwaddr not used: %s", m)
	}
}

func TestAgentPortNamesAgree(t *testing.T) {
	if qemucmd.AgentPortName != agent.PortName {
		t.Fatalf("qemucmd port %q, agent port %q", qemucmd.AgentPortName, agent.PortName)
	}
}

func TestRunDirLimit(t *testing.T) {
	long := "/tmp/" + strings.Repeat("d", 70)
	if _, err := New(Options{Dir: t.TempDir(), RunDir: long, Images: noImages{}}); err == nil {
		t.Fatal("a run dir too long for socket paths was accepted")
	}
}
