package instance

import (
	"strings"
	"testing"
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
