package instance

import (
	"errors"
	"strings"
	"testing"

	"tandem/internal/errdefs"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "c1", "web-01", strings.Repeat("x", 63), "9"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "A", "a/b", "..", ".", "a.b", "a_b", "a\x00", strings.Repeat("x", 64), "é"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestValidateConfig(t *testing.T) {
	good := map[string]string{
		"limits.cpu": "2", "limits.memory": "512MiB", "limits.disk": "10GiB", "limits.processes": "100",
		"limits.cpu.allowance": "50%", "security.privileged": "false", "user.note": "anything at all",
		"environment.FOO": "bar", "image.os": "windows",
	}
	if err := ValidateConfig(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []map[string]string{
		{"limits.cpu": "-1"}, {"limits.cpu": "2000"}, {"limits.cpu": "3-1"}, {"limits.memory": "0"},
		{"limits.memory": "-5MiB"}, {"limits.cpu.allowance": "150%"}, {"limits.cpu.allowance": "25/100"},
		{"security.privileged": "yes"}, {"nonsense": "1"}, {"user.": "x"}, {"volatile.eth0.hwaddr": "x"},
		{"user.x": "a\x00b"}, {"image.os": "win dows"},
	} {
		if err := ValidateConfig(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if got := ParseLimits(map[string]string{"limits.cpu": "0-3,6", "limits.memory": "1GiB"}); got.CPU != 5 || got.Memory != 1<<30 {
		t.Fatalf("ParseLimits: %+v", got)
	}
}

func TestParseStat(t *testing.T) {
	info, err := parseStat("regular file 640 0 12 100000\n")
	if err != nil || info.Mode != 0o640 || info.GID != 12 || info.Size != 100000 {
		t.Fatalf("%+v %v", info, err)
	}
	if _, err := parseStat("regular empty file 644 0 0 0"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"directory 755 0 0 4096", "socket 755 0 0 0", "garbage", ""} {
		if _, err := parseStat(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, p := range []string{"relative", "", "/a\x00b"} {
		if checkGuestPath(p) == nil {
			t.Errorf("path %q accepted", p)
		}
	}
}

// Impossible sizes and NIC names Linux reserves are refused when asked, not when the driver tries.
func TestValidateRefusesImpossible(t *testing.T) {
	for key, v := range map[string]string{"limits.disk": "18446744073709551615", "limits.memory": "0"} {
		err := ValidateConfig(map[string]string{key: v})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s=%s: %v", key, v, err)
		}
	}
	if err := ValidateConfig(map[string]string{"limits.disk": "2EiB"}); err == nil || !strings.Contains(err.Error(), "1EiB") {
		t.Errorf("limits.disk=2EiB: %v", err)
	}
	if err := ValidateConfig(map[string]string{"limits.disk": "1KiB"}); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("limits.disk=1KiB: %v", err)
	}
	root := map[string]string{"type": "disk", "path": "/", "size": "18446744073709551615"}
	if err := ValidateDevice("root", root); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("root size 2^64-1: %v", err)
	}
	for _, name := range []string{"lo", "all", "default", "sixteen-chars-xy", ".."} {
		err := ValidateDevice("eth1", map[string]string{"type": "nic", "network": "tandem0", "name": name})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), `key "name"`) {
			t.Errorf("NIC name %q: %v", name, err)
		}
	}
	if err := ValidateDevice("eth1", map[string]string{"type": "nic", "network": "tandem0", "name": "eth1"}); err != nil {
		t.Errorf("NIC name eth1: %v", err)
	}
}
