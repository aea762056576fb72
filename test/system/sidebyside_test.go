package system

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/testenv"
)

// waitAgent waits until a VM's guest agent runs commands (the guest has booted).
func waitAgent(t *testing.T, h *daemonHarness, name string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if _, _, err := h.tandem("exec", name, "--", "true"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _, _ := h.tandem("console", name, "--show-log")
			t.Fatalf("VM %s hung: its agent did not answer within 3 minutes; console:\n%s", name, log)
		}
		time.Sleep(time.Second)
	}
}

func ipOf(t *testing.T, h *daemonHarness, name string) string {
	t.Helper()
	var inst api.Instance
	if err := json.Unmarshal([]byte(h.must("info", name, "--format", "json")), &inst); err != nil {
		t.Fatal(err)
	}
	if len(inst.NICs) == 0 || inst.NICs[0].IPv4 == "" {
		t.Fatalf("%s has no address: %+v", name, inst.NICs)
	}
	return inst.NICs[0].IPv4
}

// Containers and VMs on one host and one network, through the CLI: addresses by DHCP, reaching each
// other by address and by name, exec in both, limits accounted together, a SIGKILLed daemon that
// finds them all still running, and nothing left after delete.
func TestContainersAndVMsSideBySide(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startHost(t, "--accel", "tcg")
	h.must("image", "build", "busybox")

	containers, vms := []string{"c1", "c2", "c3"}, []string{"v1", "v2"}
	for _, c := range containers {
		h.must("launch", "busybox", c, "-c", "limits.memory=128MiB", "-c", "limits.cpu=1")
	}
	for _, v := range vms {
		h.must("launch", "busybox", v, "--vm", "-c", "limits.memory=256MiB", "-c", "limits.cpu=1")
	}
	for _, v := range vms {
		waitAgent(t, h, v)
	}

	// Every instance got its address from DHCP: what the guest has is what tandem assigned.
	for _, name := range append(containers, vms...) {
		want := ipOf(t, h, name)
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, _, _ := h.tandem("exec", name, "--", "ip", "-4", "addr", "show", "eth0")
			if strings.Contains(out, want+"/") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never got %s by DHCP: %s", name, want, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	// Container to VM and VM to container, by address and by name.
	for _, pair := range [][2]string{{"c1", "v1"}, {"v1", "c1"}, {"v2", "c3"}} {
		for _, target := range []string{pair[1], ipOf(t, h, pair[1])} {
			if out, errOut, err := h.tandem("exec", pair[0], "--", "ping", "-c", "1", "-W", "5", target); err != nil {
				t.Fatalf("%s cannot ping %s: %v\n%s%s", pair[0], target, err, out, errOut)
			}
		}
	}
	// Both reach a server outside the host through NAT: the outside network has no route back to the
	// instances' subnet, so only masquerading makes the answer come back.
	outside := startOutsideServer(t, h)
	for _, name := range []string{"c2", "v2"} {
		if out, errOut, err := h.tandem("exec", name, "--", "wget", "-q", "-O", "-", outside); err != nil || out != "outside says hello\n" {
			t.Fatalf("%s through NAT: %v %q %s", name, err, out, errOut)
		}
	}
	// Addresses stay with the instance across a stop and start.
	before := ipOf(t, h, "c3")
	h.must("restart", "c3")
	if after := ipOf(t, h, "c3"); after != before {
		t.Fatalf("c3 changed address across restart: %s -> %s", before, after)
	}

	// exec in a VM passes output and exit codes like in a container.
	for _, name := range []string{"v1", "c1"} {
		if out := h.must("exec", name, "--", "echo", "hello from", name); out != "hello from "+name+"\n" {
			t.Fatalf("exec in %s: %q", name, out)
		}
		for _, code := range []int{0, 1, 42} {
			_, _, err := h.tandem("exec", name, "--", "sh", "-c", fmt.Sprintf("exit %d", code))
			if got := exitCode(err); got != code {
				t.Fatalf("exec exit %d in %s: got %d", code, name, got)
			}
		}
	}
	// Files go in and out of both kinds, with their mode.
	local := filepath.Join(t.TempDir(), "payload")
	payload := strings.Repeat("tandem file payload\n", 5000)
	os.WriteFile(local, []byte(payload), 0o600)
	for _, name := range []string{"c1", "v1"} {
		h.must("file", "push", local, name+"/root/payload", "--mode", "0640")
		if out := h.must("exec", name, "--", "stat", "-c", "%a %s", "/root/payload"); out != fmt.Sprintf("640 %d\n", len(payload)) {
			t.Fatalf("pushed file in %s: %q", name, out)
		}
		back := filepath.Join(t.TempDir(), "back")
		h.must("file", "pull", name+"/root/payload", back)
		if got, _ := os.ReadFile(back); string(got) != payload {
			t.Fatalf("pulled from %s: %d bytes, want %d", name, len(got), len(payload))
		}
		if _, errOut, err := h.tandem("file", "pull", name+"/no/such/file", back); err == nil || !strings.Contains(errOut, "Error:") {
			t.Fatalf("pull of a missing file from %s: %v %s", name, err, errOut)
		}
	}

	// NICs plug into running instances of both kinds, on a second network, and unplug again.
	h.must("network", "create", "net2", "--subnet", "10.222.0.0/24")
	for _, name := range []string{"c1", "v1"} {
		h.must("config", "device", "add", name, "eth1", "nic", "network=net2")
		deadline := time.Now().Add(60 * time.Second)
		for {
			// The image runs DHCP on eth0 only; ask for eth1's lease by hand.
			out, _, _ := h.tandem("exec", name, "--", "sh", "-c", "udhcpc -i eth1 -n -q -t 3 -s /usr/share/udhcpc/default.script >/dev/null 2>&1; ip -4 addr show eth1")
			if strings.Contains(out, "10.222.0.") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("hot-plugged eth1 in %s got no address: %q", name, out)
			}
			time.Sleep(time.Second)
		}
	}
	var c1 api.Instance
	json.Unmarshal([]byte(h.must("info", "c1", "--format", "json")), &c1)
	for _, n := range c1.NICs {
		if n.Name == "eth1" {
			h.must("exec", "v1", "--", "ping", "-c", "1", "-W", "5", n.IPv4)
		}
	}
	for _, name := range []string{"c1", "v1"} {
		h.must("config", "device", "remove", name, "eth1")
		if out, _, _ := h.tandem("exec", name, "--", "ip", "link", "show", "eth1"); strings.Contains(out, "eth1") {
			t.Fatalf("eth1 still in %s after unplug", name)
		}
	}
	h.must("network", "delete", "net2")

	var v1 api.Instance
	json.Unmarshal([]byte(h.must("info", "v1", "--format", "json")), &v1)
	if v1.Guest == nil || len(v1.Guest.IPs) == 0 || v1.Guest.IPs[0] != v1.NICs[0].IPv4 || v1.Guest.Hostname != "v1" {
		t.Fatalf("guest info of v1: %+v (NIC %+v)", v1.Guest, v1.NICs)
	}
	// The host accounts for both kinds.
	var host api.Host
	json.Unmarshal([]byte(h.must("host", "info", "--format", "json")), &host)
	if a := host.Allocated; a.Running != 5 || a.CPU != 5 || a.Memory != 3*128<<20+2*256<<20 {
		t.Fatalf("allocated: %+v", a)
	}

	// SIGKILL the daemon: everything keeps running and is managed again after the restart, with the
	// same addresses.
	addrs := map[string]string{}
	for _, name := range append(containers, vms...) {
		addrs[name] = ipOf(t, h, name)
	}
	h.stop(syscall.SIGKILL)
	h.start()
	for name, ip := range addrs {
		if got := ipOf(t, h, name); got != ip {
			t.Fatalf("%s changed address across a daemon restart: %s -> %s", name, ip, got)
		}
	}
	for _, inst := range instances(t, h) {
		if inst.Status != api.StatusRunning {
			t.Fatalf("after a daemon SIGKILL %s is %s", inst.Name, inst.Status)
		}
	}
	h.must("exec", "v2", "--", "true")
	h.must("exec", "c2", "--", "true")
	// A graceful stop reaches the guest's init.
	h.must("stop", "v2", "--timeout", "60")
	if log := h.must("console", "v2", "--show-log"); !strings.Contains(log, "Power down") {
		t.Fatalf("v2's init did not see the powerdown:\n%s", log)
	}
	h.must("pause", "v1")
	assertStatus(t, h, "v1", api.StatusPaused)
	h.must("resume", "v1")
	h.must("exec", "v1", "--", "true")

	for _, name := range append(containers, vms...) {
		h.must("delete", name, "--force")
	}
	h.must("network", "delete", "tandem0") // its bridge, rules and dnsmasq go with it
	assertNothingLeft(t, h)
}

// startOutsideServer makes an "outside world" namespace joined to the host's namespace by a veth,
// serving one file over HTTP, and returns its URL. The host routes to it; it has no route back to
// the instances.
func startOutsideServer(t *testing.T, h *daemonHarness) string {
	t.Helper()
	out := h.netns + "-out"
	run := func(args ...string) {
		t.Helper()
		if b, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, b)
		}
	}
	run("ip", "netns", "add", out)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "pids", out).Run()
		if pids, _ := exec.Command("ip", "netns", "pids", out).Output(); len(pids) > 0 {
			for _, pid := range strings.Fields(string(pids)) {
				exec.Command("kill", "-9", pid).Run()
			}
		}
		exec.Command("ip", "netns", "del", out).Run()
	})
	run("ip", "-n", h.netns, "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1", "netns", out)
	run("ip", "-n", h.netns, "addr", "add", "198.51.100.1/24", "dev", "uplink0")
	run("ip", "-n", h.netns, "link", "set", "uplink0", "up")
	run("ip", "-n", out, "addr", "add", "198.51.100.2/24", "dev", "uplink1")
	run("ip", "-n", out, "link", "set", "uplink1", "up")
	run("ip", "-n", out, "link", "set", "lo", "up")
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "hello"), []byte("outside says hello\n"), 0o644)
	os.Chmod(root, 0o755)
	run("ip", "netns", "exec", out, "busybox", "httpd", "-p", "8080", "-h", root)
	return "http://198.51.100.2:8080/hello"
}

// assertNothingLeft checks a host whose instances and networks were all deleted: no QEMU, shim,
// dnsmasq, bridge, veth or tap, and no per-instance directory.
func assertNothingLeft(t *testing.T, h *daemonHarness) {
	t.Helper()
	if out, _ := exec.Command("pgrep", "-f", h.dir).Output(); len(out) > 0 {
		ps, _ := exec.Command("pgrep", "-af", h.dir).Output()
		// tandemd itself matches; anything else is a leftover.
		for _, line := range strings.Split(strings.TrimSpace(string(ps)), "\n") {
			if !strings.Contains(line, "tandemd") {
				t.Errorf("left running: %s", line)
			}
		}
	}
	links, _ := exec.Command("ip", "-n", h.netns, "-o", "link").Output()
	for _, line := range strings.Split(strings.TrimSpace(string(links)), "\n") {
		if strings.Contains(line, "tdm") {
			t.Errorf("interface left: %s", line)
		}
	}
	for _, sub := range []string{"containers", "vm"} {
		entries, _ := filepath.Glob(filepath.Join(h.dir, sub, "*-*-*-*-*"))
		if len(entries) > 0 {
			t.Errorf("instance files left in %s: %v", sub, entries)
		}
	}
}
