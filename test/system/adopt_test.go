package system

import (
	"bytes"
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

// TestDefaultBridgeAdoption: a second daemon in a network namespace whose tandem0 a live daemon
// owns refuses to start and names that daemon; once the owner is gone, a daemon adopts its
// orphaned tandem0 (same subnet, the orphan's dnsmasq replaced), and so does a daemon whose state
// dir was wiped.
func TestDefaultBridgeAdoption(t *testing.T) {
	testenv.Require(t, "root", "iproute2", "nsenter", "dnsmasq", "nft")
	a := startHost(t, "--driver", "fake")
	subnetA := defaultSubnet(t, a)

	// B, in A's namespace with its own dir, while A runs.
	dirB, err := os.MkdirTemp("", "td-")
	if err != nil {
		t.Fatal(err)
	}
	out, err := runDaemonOnce(t, a.netns, dirB)
	if err == nil {
		t.Fatalf("a second daemon started on a namespace whose tandem0 a live daemon owns:\n%s", out)
	}
	want := fmt.Sprintf("belongs to the tandemd with pid %d, whose networks are in %s", a.cmd.Process.Pid, filepath.Join(a.dir, "networks"))
	if !strings.Contains(out, want) {
		t.Fatalf("the refusal does not say who holds tandem0 (%q):\n%s", want, out)
	}
	os.RemoveAll(dirB)

	// A stops: its bridge and dnsmasq stay. B adopts them.
	a.stop(syscall.SIGTERM)
	b := &daemonHarness{t: t, dir: dirB, args: []string{"--driver", "fake"}, netns: a.netns}
	t.Cleanup(func() {
		b.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("tandemd B log:\n%s", b.log)
		}
		os.RemoveAll(dirB)
	})
	b.start()
	if got := defaultSubnet(t, b); got != subnetA {
		t.Errorf("adopted tandem0 has subnet %s, the orphan had %s", got, subnetA)
	}
	checkBridgeServedBy(t, a.netns, dirB)

	// B's state dir is wiped while its bridge stays: B adopts its own orphan.
	b.stop(syscall.SIGTERM)
	entries, _ := os.ReadDir(dirB)
	for _, e := range entries {
		os.RemoveAll(filepath.Join(dirB, e.Name()))
	}
	b.start()
	if got := defaultSubnet(t, b); got != subnetA {
		t.Errorf("after a wiped state dir tandem0 has subnet %s, want %s", got, subnetA)
	}
	checkBridgeServedBy(t, a.netns, dirB)
}

func defaultSubnet(t *testing.T, d *daemonHarness) string {
	t.Helper()
	var n api.Network
	if err := json.Unmarshal([]byte(d.must("network", "info", "tandem0", "--format", "json")), &n); err != nil || n.Subnet == "" {
		t.Fatalf("network info tandem0: %v %+v", err, n)
	}
	return n.Subnet
}

// checkBridgeServedBy checks that tandem0 is marked as the daemon of dir's and that exactly one
// dnsmasq serves it, that daemon's.
func checkBridgeServedBy(t *testing.T, ns, dir string) {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "tandem0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "alias tandem:"+filepath.Join(dir, "networks")) {
		t.Errorf("tandem0 not marked as %s's: %v\n%s", dir, err, out)
	}
	pids, _ := exec.Command("ip", "netns", "pids", ns).Output()
	var served []string
	for _, pid := range strings.Fields(string(pids)) {
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if args := strings.Split(string(cmdline), "\x00"); filepath.Base(args[0]) == "dnsmasq" {
			served = append(served, strings.Join(args[1:], " "))
		}
	}
	if len(served) != 1 || !strings.Contains(served[0], dir) {
		t.Errorf("dnsmasqs in the namespace: %q, want one, of %s", served, dir)
	}
}

// runDaemonOnce runs tandemd in a namespace expecting it to exit at start, and returns its output.
func runDaemonOnce(t *testing.T, ns, dir string) (string, error) {
	ctx := testenv.Context(t, 30*time.Second)
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+ns, filepath.Join(binaries(t), "tandemd"),
		"--dir", dir, "--driver", "fake")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("tandemd did not exit within 30 s:\n%s", out.String())
	}
	return out.String(), err
}
