package system

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem/internal/daemon"
	"tandem/internal/testenv"
)

// With --vm-user, QEMU runs unprivileged and still gets its NIC on the managed network (the tap is
// made for that user).
func TestUnprivilegedVMOnNetwork(t *testing.T) {
	testenv.Require(t, realDrivers...)
	testenv.Require(t, "user-nobody")
	h := startHost(t, "--accel", "tcg", "--vm-user", "nobody")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "v1", "--vm")
	waitAgent(t, h, "v1")
	out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+h.dir).Output()
	pids := strings.Fields(string(out))
	if len(pids) != 1 {
		t.Fatalf("qemu processes for this host: %q", out)
	}
	status, _ := os.ReadFile("/proc/" + pids[0] + "/status")
	if !strings.Contains(string(status), "Uid:\t65534") {
		t.Fatalf("qemu does not run as nobody:\n%s", status)
	}
	gateway := strings.TrimSuffix(ipOf(t, h, "v1"), ".2") + ".1"
	if _, errOut, err := h.tandem("exec", "v1", "--", "ping", "-c", "1", "-W", "5", gateway); err != nil {
		t.Fatalf("the unprivileged VM cannot reach its gateway %s: %v %s", gateway, err, errOut)
	}
	h.must("delete", "v1", "--force")
	h.must("network", "delete", "tandem0")
}

// qemuOf returns the pid of the one QEMU of host h.
func qemuOf(t *testing.T, h *daemonHarness) string {
	t.Helper()
	out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+h.dir).Output()
	pids := strings.Fields(string(out))
	if len(pids) != 1 {
		t.Fatalf("qemu processes for this host: %q", out)
	}
	return pids[0]
}

// procField returns a field of /proc/PID/status ("Uid", "CapEff").
func procField(t *testing.T, pid, field string) string {
	t.Helper()
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%s/status", field, pid)
	return ""
}

// cgroupLimit reads a limit of the cgroup pid is in: memory (bytes) or cpu (µs per 100 ms, -1
// for none), from the v2 file or the v1 one.
func cgroupLimit(t *testing.T, pid, what string) int64 {
	t.Helper()
	data, _ := os.ReadFile("/proc/" + pid + "/cgroup")
	paths := map[string]string{} // controller -> path
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.SplitN(l, ":", 3)
		for _, c := range strings.Split(f[1], ",") {
			paths[c] = f[2]
		}
	}
	read := func(file string) string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s limit of qemu (cgroups %q): %v", what, data, err)
		}
		return strings.TrimSpace(string(b))
	}
	num := func(s string) int64 {
		if s == "max" {
			return -1
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("%s limit %q", what, s)
		}
		return n
	}
	if p, ok := paths[what]; ok { // v1
		if what == "memory" {
			return num(read(filepath.Join("/sys/fs/cgroup/memory", p, "memory.limit_in_bytes")))
		}
		return num(read(filepath.Join("/sys/fs/cgroup/cpu", p, "cpu.cfs_quota_us")))
	}
	if what == "memory" {
		return num(read(filepath.Join("/sys/fs/cgroup", paths[""], "memory.max")))
	}
	return num(strings.Fields(read(filepath.Join("/sys/fs/cgroup", paths[""], "cpu.max")))[0])
}

// By default QEMU runs as tandem-qemu with no capability, in a cgroup of its own under the
// daemon's that limits.memory and limits.cpu bound, and its console log is the owner's alone; as
// that user the VM boots, runs exec, takes a volume and a NIC while it runs, and restarts.
func TestVMDefaultUserBounded(t *testing.T) {
	testenv.Require(t, realDrivers...)
	testenv.Require(t, "vm-user")
	u, err := user.Lookup(daemon.DefaultVMUser)
	if err != nil {
		t.Fatal(err)
	}
	h := startHost(t, "--accel", "tcg")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "v1", "--vm", "-c", "limits.memory=256MiB", "-c", "limits.cpu=1")
	waitAgent(t, h, "v1")
	pid := qemuOf(t, h)
	if uid := procField(t, pid, "Uid"); strings.Fields(uid)[0] != u.Uid || strings.Fields(uid)[3] != u.Uid {
		t.Errorf("qemu runs as uids %q, want %s (%s)", uid, u.Uid, daemon.DefaultVMUser)
	}
	for _, caps := range []string{"CapEff", "CapPrm", "CapAmb"} {
		if v := procField(t, pid, caps); v != "0000000000000000" {
			t.Errorf("qemu has %s %s", caps, v)
		}
	}
	cg, _ := os.ReadFile("/proc/" + pid + "/cgroup")
	if parent := "/tandem-" + filepath.Base(daemon.RunDir(h.dir)) + "/"; !strings.Contains(string(cg), parent) {
		t.Errorf("qemu is not in a cgroup under %s:\n%s", parent, cg)
	}
	// 256 MiB of RAM, QEMU's overhead (256 MiB + RAM/8) and TCG's translation cache (1 GiB).
	if mem, want := cgroupLimit(t, pid, "memory"), int64(256+256+32+1024)<<20; mem != want {
		t.Errorf("qemu's memory limit is %d, want %d", mem, want)
	}
	if cpu := cgroupLimit(t, pid, "cpu"); cpu != 100000 {
		t.Errorf("qemu's cpu quota is %d µs per 100 ms, want 100000 (limits.cpu=1)", cpu)
	}
	logs, _ := filepath.Glob(filepath.Join(h.dir, "vm", "instances", "*", "console.log"))
	if len(logs) != 1 {
		t.Fatalf("console logs: %v", logs)
	}
	if fi, err := os.Stat(logs[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("console log: %v %v, want mode 0600", fi.Mode(), err)
	}

	// A NIC and a volume, hot-plugged into the unprivileged QEMU.
	h.must("network", "create", "net2", "--subnet", "10.93.0.0/24")
	h.must("config", "device", "add", "v1", "eth1", "nic", "network=net2")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		// The image runs DHCP on eth0 only; ask for eth1's lease by hand.
		out, _, _ := h.tandem("exec", "v1", "--", "sh", "-c", "udhcpc -i eth1 -n -q -t 3 -s /usr/share/udhcpc/default.script >/dev/null 2>&1; ip -4 addr show eth1")
		if strings.Contains(out, "10.93.0.") {
			break
		}
		if time.Now().After(deadline) {
			links, _, _ := h.tandem("exec", "v1", "--", "ip", "addr")
			t.Fatalf("the hot-plugged eth1 got no address: %q; the guest has:\n%s", out, links)
		}
	}
	h.must("exec", "v1", "--", "ping", "-c", "1", "-W", "5", "10.93.0.1")
	// Unplugged again: a second hotplug port does not reach this guest (a device on it never
	// shows), whoever QEMU runs as, so the volume takes the port the NIC had.
	h.must("config", "device", "remove", "v1", "eth1")

	h.must("storage", "volume", "create", "default", "data1", "--size", "64MiB")
	h.must("volume", "attach", "v1", "data1")
	h.must("exec", "v1", "--", "sh", "-c", strings.Replace(vmMount, "$1", "data1", -1)+" && echo hi > /mnt/data1/f && cat /mnt/data1/f")

	h.must("restart", "v1", "--force")
	waitAgent(t, h, "v1")
	if pid2 := qemuOf(t, h); pid2 == pid || cgroupLimit(t, pid2, "memory") != int64(256+256+32+1024)<<20 {
		t.Errorf("after a restart: qemu %s (was %s), its limit lost", pid2, pid)
	}
	h.must("delete", "v1", "--force")
	parent := "tandem-" + filepath.Base(daemon.RunDir(h.dir))
	v1, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent, "*"))
	v2, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", parent, "*"))
	for _, d := range append(v1, v2...) {
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			t.Errorf("the VM's cgroup %s outlived it", d)
		}
	}
	h.must("network", "delete", "net2")
	h.must("network", "delete", "tandem0")
}
