package system

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// With --vm-user, QEMU runs unprivileged and still gets its NIC on the managed network (the tap is
// made for that user).
func TestUnprivilegedVMOnNetwork(t *testing.T) {
	requireRealDrivers(t)
	if _, err := exec.Command("id", "nobody").Output(); err != nil {
		t.Skip("there is no user nobody")
	}
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
