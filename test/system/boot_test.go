package system

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/daemon"
	"tandem/internal/image"
	"tandem/internal/testenv"
)

// A container whose init dies at once fails its launch, with the console's last lines in the
// error, and is not left running; the failed start changes nothing for the next one.
func TestContainerInitDiesAtStart(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startHost(t, "--accel", "tcg", "--default-network=false")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "c1")
	h.must("exec", "c1", "--", "sh", "-c",
		"rm /sbin/init && printf '#!/bin/sh\\necho broken-init-says-bye\\nexit 1\\n' > /sbin/init && chmod 755 /sbin/init")
	h.must("stop", "c1", "--force")
	h.must("publish", "c1", "--alias", "broken")

	out, errOut, err := h.tandem("launch", "broken", "c2")
	if err == nil {
		t.Fatalf("launch of an image whose init exits 1 succeeded: %s", out)
	}
	if strings.Contains(out, "Launched") || !strings.Contains(errOut, "init exited with code 1") ||
		!strings.Contains(errOut, "broken-init-says-bye") {
		t.Fatalf("launch error does not say init died and what the console printed:\nstdout: %s\nstderr: %s", out, errOut)
	}
	t.Logf("launch failed as it should: %s", strings.TrimSpace(errOut))
	assertStatus(t, h, "c2", api.StatusStopped)
	// The same failure on a plain start, and the instance stays deletable.
	if _, errOut, err := h.tandem("start", "c2"); err == nil || !strings.Contains(errOut, "broken-init-says-bye") {
		t.Fatalf("start of c2: %v %s", err, errOut)
	}
	assertStatus(t, h, "c2", api.StatusStopped)
	h.must("delete", "c2")
	h.must("delete", "c1")
}

// The Debian image (systemd as init) boots as a container to running or degraded: systemd makes
// its scopes in the container's own cgroup, and cannot lift the limits tandem set on it.
func TestDebianContainerBoots(t *testing.T) {
	testenv.Require(t, realDrivers...)
	requireDebianMirror(t)
	// In the host's network namespace: debootstrap needs the mirror (startHost's namespace has no route out).
	h := startDaemon(t, "--accel", "tcg", "--default-network=false")
	if out, errOut, err := h.tandemWithin(20*time.Minute, "image", "build", "debian"); err != nil {
		t.Fatalf("image build debian: %v\n%s%s", err, out, errOut)
	}
	h.must("launch", "debian", "d1", "-c", "limits.memory=256MiB")

	state := ""
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(2 * time.Second) {
		out, _, _ := h.tandem("exec", "d1", "--", "systemctl", "is-system-running")
		state = strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			con, _, _ := h.tandem("console", "d1", "--show-log")
			failed, _, _ := h.tandem("exec", "d1", "--", "systemctl", "--failed", "--no-legend")
			t.Fatalf("systemd in d1 is %q after 3 min; failed units: %s\nconsole:\n%s", state, failed, con)
		}
	}
	if state == "degraded" {
		failed, _, _ := h.tandem("exec", "d1", "--", "systemctl", "--failed", "--no-legend")
		t.Logf("d1 is degraded; failed units: %s", failed)
	}
	// systemd moved itself into init.scope of a cgroup tree rooted at the container's cgroup.
	if out := h.must("exec", "d1", "--", "cat", "/proc/1/cgroup"); !strings.Contains(out, ":/init.scope") || strings.Contains(out, "tandem") {
		t.Fatalf("init's cgroups, as the container sees them: %q", out)
	}
	// The container's root cannot raise the limit on its own cgroup; the host still shows 256 MiB.
	script := `for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
		[ -e "$f" ] || continue; if echo max > "$f" || echo 9999999999 > "$f"; then echo "WROTE $f"; fi; done; true`
	if out, errOut, _ := h.tandem("exec", "d1", "--", "sh", "-c", script); strings.Contains(out, "WROTE") {
		t.Fatalf("the container lifted its own memory limit: %s %s", out, errOut)
	}
	if got := hostMemoryLimit(t, h); got != 256<<20 {
		t.Fatalf("host-side memory limit of d1: %d, want %d", got, 256<<20)
	}
	h.must("stop", "d1", "--timeout", "60")
	h.must("delete", "d1")
}

// requireDebianMirror skips when debootstrap cannot run or reach the host's Debian mirror.
func requireDebianMirror(t *testing.T) {
	t.Helper()
	testenv.Require(t, "debootstrap")
	mirror := image.FindDebianMirror("/", "bookworm")
	if !strings.HasPrefix(mirror, "http") {
		return
	}
	hc := &http.Client{Timeout: 15 * time.Second}
	resp, err := hc.Get(mirror + "/dists/bookworm/Release")
	if err != nil {
		testenv.Unsupported(t, "debootstrap cannot reach the mirror %s: %v", mirror, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		testenv.Unsupported(t, "debootstrap cannot use the mirror %s: %s", mirror, resp.Status)
	}
}

// hostMemoryLimit reads the memory limit of the daemon's only instance cgroup on the host (v2 or v1).
func hostMemoryLimit(t *testing.T, h *daemonHarness) int64 {
	t.Helper()
	parent := "tandem-" + filepath.Base(daemon.RunDir(h.dir))
	var files []string
	for _, pattern := range []string{"/sys/fs/cgroup/" + parent + "/*/memory.max", "/sys/fs/cgroup/memory/" + parent + "/*/memory.limit_in_bytes"} {
		found, _ := filepath.Glob(pattern)
		files = append(files, found...)
	}
	if len(files) != 1 {
		t.Fatalf("want the memory limit file of one instance cgroup under %s, found %q", parent, files)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q", files[0], data)
	}
	return n
}

// A NIC a VM booted with can be removed live on q35 (it sits on a root port of its own, not on
// pcie.0, which cannot hot-unplug) and on pc; a microvm refuses clearly and keeps it.
func TestVMBootNICHotRemoved(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startHost(t, "--accel", "tcg")
	h.must("image", "build", "busybox")
	for _, machine := range []string{"q35", "pc", "microvm"} {
		name := "v-" + machine
		h.must("launch", "busybox", name, "--vm", "-c", "vm.machine="+machine, "-c", "limits.memory=192MiB")
		waitAgent(t, h, name)
		if out, _, err := h.tandem("exec", name, "--", "ls", "/sys/class/net"); err != nil || !strings.Contains(out, "eth0") {
			t.Fatalf("%s booted without eth0: %q %v", name, out, err)
		}
		out, errOut, err := h.tandem("config", "device", "remove", name, "eth0")
		if machine == "microvm" {
			if err == nil || !strings.Contains(errOut, "microvm") || !strings.Contains(errOut, "hotplug") {
				t.Fatalf("removing a microvm's NIC live: %v %s%s", err, out, errOut)
			}
			if out, _, _ := h.tandem("exec", name, "--", "ls", "/sys/class/net"); !strings.Contains(out, "eth0") {
				t.Fatalf("the refused removal took eth0 from %s: %q", name, out)
			}
		} else {
			if err != nil {
				t.Fatalf("removing %s's boot NIC live: %v %s%s", name, err, out, errOut)
			}
			if out, _, _ := h.tandem("exec", name, "--", "ls", "/sys/class/net"); strings.Contains(out, "eth0") {
				t.Fatalf("eth0 still in %s after its removal: %q", name, out)
			}
			var inst api.Instance
			if err := json.Unmarshal([]byte(h.must("info", name, "--format", "json")), &inst); err != nil || len(inst.NICs) != 0 {
				t.Fatalf("%s still lists NICs %+v (%v)", name, inst.NICs, err)
			}
		}
		h.must("delete", "--force", name)
	}
}

// A stateful stop of a VM saves the guest; the next start resumes it: a counter in the guest
// carries on from where it stood, with no reboot in between.
func TestVMStatefulStopCounterContinues(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startHost(t, "--accel", "tcg")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "v1", "--vm", "-c", "limits.memory=256MiB")
	waitAgent(t, h, "v1")
	h.must("exec", "v1", "--", "sh", "-c", vmCounter)
	time.Sleep(2 * time.Second)
	ticks := func() []int {
		out, _, err := h.tandem("exec", "v1", "--", "sh", "-c", "sync; cat /root/ticks")
		if err != nil {
			t.Fatalf("reading the ticks: %v", err)
		}
		return numbers(regexp.MustCompile(`(\d+)`), out)
	}
	before := ticks()
	if len(before) < 5 {
		t.Fatalf("the counter does not count: %v", before)
	}
	start := time.Now()
	out, errOut, err := h.tandem("stop", "v1", "--stateful")
	if err != nil {
		t.Fatalf("stop --stateful: %v %s%s", err, out, errOut)
	}
	t.Logf("stateful stop took %s", time.Since(start).Round(time.Millisecond))
	assertStatus(t, h, "v1", api.StatusStopped)
	start = time.Now()
	h.must("start", "v1")
	t.Logf("start from the saved state took %s", time.Since(start).Round(time.Millisecond))
	assertStatus(t, h, "v1", api.StatusRunning)
	waitAgent(t, h, "v1")
	time.Sleep(2 * time.Second)
	after := ticks()
	last := before[len(before)-1]
	if len(after) <= len(before) || after[len(after)-1] <= last+5 {
		t.Fatalf("the counter did not carry on after the restore: %d ticks before (last %d), %d after (last %v)",
			len(before), last, len(after), after[len(after)-1:])
	}
	for i := 1; i < len(after); i++ {
		if after[i] != after[i-1]+1 {
			t.Fatalf("the counter restarted or jumped at tick %d: %v", i, after[max(0, i-3):min(len(after), i+3)])
		}
	}
	// The saved state is used once: a plain stop and start boot afresh.
	h.must("stop", "v1", "--force")
	h.must("start", "v1")
	waitAgent(t, h, "v1")
	h.must("delete", "--force", "v1")
}
