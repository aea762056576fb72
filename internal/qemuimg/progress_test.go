package qemuimg

import (
	"os/exec"
	"testing"
)

func TestPercent(t *testing.T) {
	for line, want := range map[string]int{"    (0.00/100%)": 0, "(12.34/100%)": 12, "    (100.00/100%)": 100} {
		if got, ok := Percent(line); !ok || got != want {
			t.Errorf("%q: %d %v, want %d", line, got, ok, want)
		}
	}
	for _, line := range []string{"", "qemu-img: error", "(abc/100%)", "(150.0/100%)"} {
		if _, ok := Percent(line); ok {
			t.Errorf("%q parsed as progress", line)
		}
	}
}

// Run passes on each new percentage of a \r-redrawn progress line, and stderr.
func TestRun(t *testing.T) {
	var got []int
	cmd := exec.Command("sh", "-c", `printf '    (0.00/100%%)\r    (0.50/100%%)\r    (50.00/100%%)\r    (100.00/100%%)\n'; echo oops >&2; exit 3`)
	stderr, err := Run(cmd, func(p int) { got = append(got, p) })
	if err == nil || stderr != "oops" {
		t.Fatalf("err %v, stderr %q: want the exit status and stderr", err, stderr)
	}
	if len(got) != 3 || got[0] != 0 || got[1] != 50 || got[2] != 100 {
		t.Fatalf("percentages %v, want [0 50 100]", got)
	}
}
