package system

import (
	"strings"
	"testing"
	"time"

	"tandem/api"
)

// checkCopy checks that a copy kept the marker written in its source and has an identity of its own.
func checkCopy(t *testing.T, h *daemonHarness, name string, src []api.NIC, isVM bool) {
	t.Helper()
	assertStatus(t, h, name, api.StatusStopped)
	h.must("start", name)
	if isVM {
		waitAgent(t, h, name)
	}
	if out := h.must("exec", name, "--", "cat", "/root/marker"); out != "orig\n" {
		t.Errorf("%s: the marker reads %q, want the source's", name, out)
	}
	if !isVM { // owners shifted to the copy's own id range: root inside is root
		if out := h.must("exec", name, "--", "stat", "-c", "%u:%g", "/", "/root/marker", "/bin/busybox"); out != "0:0\n0:0\n0:0\n" {
			t.Errorf("%s: owners inside the copy %q, want root's", name, out)
		}
	}
	nics := nicsOf(t, h, name)
	if len(nics) != 1 || len(src) != 1 || nics[0].MAC == src[0].MAC || nics[0].MAC == "" {
		t.Errorf("%s: NICs %+v, want one with a MAC of its own (source %+v)", name, nics, src)
	}
	waitAddress(t, h, name)
}

// Copies here and to another host, of a container and of a VM, and cold moves of stopped VMs
// (local pool: the disk is sent; shared pool: nothing is).
func TestCopyAndColdMove(t *testing.T) {
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")

	a.must("launch", "busybox", "c1", "-d", "eth0,type=nic,network=lab")
	waitAddress(t, a, "c1")
	a.must("exec", "c1", "--", "sh", "-c", "echo orig > /root/marker")
	if _, errOut, err := a.tandem("copy", "c1", "c1-run"); err == nil || !strings.Contains(errOut, "stop it") {
		t.Errorf("copying a running instance: %v %q", err, errOut)
	}
	a.must("stop", "c1")
	nics := nicsOf(t, a, "c1")
	for _, bad := range [][]string{{"c1", "c1"}, {"c1", "a/b"}, {"nope", "x"}, {"c1", "x", "--target", "nowhere"}, {"c1", "x", "--storage", "nopool"}} {
		if _, _, err := a.tandem(append([]string{"copy"}, bad...)...); err == nil {
			t.Errorf("copy %v was accepted", bad)
		}
	}
	if hasInstance(t, a, "x") {
		t.Fatal("a refused copy left an instance")
	}

	start := time.Now()
	a.must("copy", "c1", "c1-here")
	t.Logf("local container copy: %v", time.Since(start).Round(time.Millisecond))
	checkCopy(t, a, "c1-here", nics, false)
	a.must("delete", "--force", "c1-here")

	start = time.Now()
	t.Logf("%s", strings.TrimSpace(a.must("copy", "c1", "c1-b", "--target", "host-b")))
	t.Logf("container copy to another host: %v", time.Since(start).Round(time.Millisecond))
	assertStatus(t, a, "c1", api.StatusStopped) // the source stays
	checkCopy(t, b, "c1-b", nics, false)
	checkRootOnDefaultPool(t, b, "container", "c1-b")
	b.must("delete", "--force", "c1-b")

	// A VM: a local copy, then a cold move with its disk.
	a.must("launch", "busybox", "v1", "--vm", "-c", "limits.memory=256MiB", "-d", "eth0,type=nic,network=lab")
	waitAgent(t, a, "v1")
	a.must("exec", "v1", "--", "sh", "-c", "echo orig > /root/marker; sync")
	a.must("stop", "v1")
	vnics := nicsOf(t, a, "v1")
	a.must("copy", "v1", "v1-here")
	checkCopy(t, a, "v1-here", vnics, true)
	a.must("delete", "--force", "v1-here")

	out := a.must("move", "v1", "--target", "host-b")
	t.Logf("%s", strings.TrimSpace(out))
	if !strings.Contains(out, "(cold)") {
		t.Errorf("the move of a stopped VM: %q", out)
	}
	if hasInstance(t, a, "v1") {
		t.Fatal("A still lists v1 after its cold move")
	}
	assertStatus(t, b, "v1", api.StatusStopped)
	checkRootOnDefaultPool(t, b, "vm", "v1")
	b.must("start", "v1")
	waitAgent(t, b, "v1")
	if out := b.must("exec", "v1", "--", "cat", "/root/marker"); out != "orig\n" {
		t.Errorf("v1's marker after the cold move reads %q", out)
	}
	if ip := waitAddress(t, b, "v1"); ip != vnics[0].IPv4 {
		t.Errorf("v1's address after the cold move %s, want %s", ip, vnics[0].IPv4)
	}
	b.must("delete", "--force", "v1")

	// A stopped VM on the shared pool: the destination takes the same disk.
	a.must("launch", "busybox", "v2", "--vm", "--storage", "sh", "-c", "limits.memory=256MiB", "-d", "eth0,type=nic,network=lab")
	waitAgent(t, a, "v2")
	a.must("exec", "v2", "--", "sh", "-c", "echo orig > /root/marker; sync")
	a.must("stop", "v2")
	out = a.must("move", "v2", "--target", "host-b")
	t.Logf("%s", strings.TrimSpace(out))
	if strings.Contains(out, "sent") {
		t.Errorf("the cold move of a VM on the shared pool sent data: %q", out)
	}
	b.must("start", "v2")
	waitAgent(t, b, "v2")
	if out := b.must("exec", "v2", "--", "cat", "/root/marker"); out != "orig\n" {
		t.Errorf("v2's marker after the shared cold move reads %q", out)
	}
	b.must("delete", "--force", "v2")
}
