package system

import (
	"strconv"
	"strings"
	"syscall"
	"testing"

	"tandem/internal/testenv"
)

// vmDisk finds the guest device of the volume attached as disk NAME (its serial) and mounts it.
// PCIe hotplug takes the guest a moment: wait for the disk to show up.
const vmMount = `i=0; while :; do
  for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "$1" ] && d=/dev/${b##*/}; done
  [ -n "$d" ] && break; i=$((i+1)); [ $i -gt 60 ] && { ls /sys/block >&2; echo "no disk with serial $1" >&2; exit 3; }; sleep 0.5
done
mkdir -p /mnt/$1 && mount -t ext4 $d /mnt/$1`

// Volumes go live between containers and VMs: written in a container, read in a VM, grown, snapshot
// and restored; one writer at a time; an attached volume cannot be deleted.
func TestVolumesAcrossInstances(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startHost(t, "--accel", "tcg", "--default-network=false")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "c1")
	h.must("launch", "busybox", "c2")
	h.must("launch", "busybox", "v1", "--vm")
	waitAgent(t, h, "v1")
	h.must("storage", "volume", "create", "default", "data1", "--size", "64MiB")

	// Written in a container...
	h.must("volume", "attach", "c1", "data1", "/mnt/data")
	h.must("exec", "c1", "--", "sh", "-c", "echo written-in-c1 > /mnt/data/hello && sync")
	if out := h.must("exec", "c1", "--", "stat", "-c", "%u", "/mnt/data/hello"); out != "0\n" {
		t.Fatalf("a file root wrote in the container is owned by %q on the volume", out)
	}
	// ...one writer at a time...
	if _, errOut, err := h.tandem("volume", "attach", "c2", "data1", "/mnt/data"); err == nil {
		t.Fatalf("a second writer was allowed: %s", errOut)
	}
	if _, errOut, err := h.tandem("storage", "volume", "delete", "default", "data1"); err == nil || !strings.Contains(errOut, "c1") {
		t.Fatalf("deleting an attached volume: %v %s", err, errOut)
	}
	h.must("volume", "detach", "c1", "data1")
	if out, _, _ := h.tandem("exec", "c1", "--", "ls", "/mnt/data"); strings.Contains(out, "hello") {
		t.Fatal("the volume is still visible in c1 after detach")
	}
	// ...read in a running VM.
	h.must("volume", "attach", "v1", "data1")
	if out := h.must("exec", "v1", "--", "sh", "-c", vmMount+" && cat /mnt/$1/hello", "sh", "data1"); out != "written-in-c1\n" {
		t.Fatalf("the VM read %q", out)
	}
	h.must("exec", "v1", "--", "umount", "/mnt/data1")
	h.must("volume", "detach", "v1", "data1")

	// Snapshot, change, restore: the old data is back.
	h.must("storage", "volume", "snapshot", "default", "data1", "snap0")
	h.must("volume", "attach", "c1", "data1", "/mnt/data")
	h.must("exec", "c1", "--", "sh", "-c", "echo changed > /mnt/data/hello && sync")
	h.must("volume", "detach", "c1", "data1")
	h.must("storage", "volume", "restore", "default", "data1", "snap0")

	// Grown (offline: the volume is detached) and seen at its new size in both kinds.
	h.must("storage", "volume", "resize", "default", "data1", "128MiB")
	h.must("volume", "attach", "c1", "data1", "/mnt/data")
	if out := h.must("exec", "c1", "--", "cat", "/mnt/data/hello"); out != "written-in-c1\n" {
		t.Fatalf("after restore: %q", out)
	}
	// ext4 keeps some for itself: a 64MiB volume shows about 56MiB, the grown one over 100MiB.
	if out := h.must("exec", "c1", "--", "sh", "-c", "df -m /mnt/data | awk 'NR==2 {print $2}'"); atoi(out) < 100 {
		t.Fatalf("container sees %sMiB after growing to 128MiB", strings.TrimSpace(out))
	}
	h.must("volume", "detach", "c1", "data1")
	h.must("volume", "attach", "v1", "data1")
	out := h.must("exec", "v1", "--", "sh", "-c", vmMount+` && umount /mnt/$1 && cat /sys/block/${d#/dev/}/size`, "sh", "data1")
	if strings.TrimSpace(out) != "262144" { // 128 MiB in 512-byte sectors
		t.Fatalf("VM sees %q sectors, want 262144", out)
	}
	h.must("volume", "detach", "v1", "data1")

	// A volume attached to a stopped container follows it across start and stop.
	h.must("stop", "c2")
	h.must("volume", "attach", "c2", "data1", "/srv")
	h.must("start", "c2")
	if out := h.must("exec", "c2", "--", "cat", "/srv/hello"); out != "written-in-c1\n" {
		t.Fatalf("volume in c2 after start: %q", out)
	}
	// A daemon killed while the volume is in use takes it back on restart: the container keeps using
	// it, and detaching and deleting work as before.
	h.stop(syscall.SIGKILL)
	h.start()
	if out := h.must("exec", "c2", "--", "cat", "/srv/hello"); out != "written-in-c1\n" {
		t.Fatalf("volume in c2 after a daemon restart: %q", out)
	}
	h.must("volume", "detach", "c2", "data1")
	for _, name := range []string{"c1", "c2", "v1"} {
		h.must("delete", name, "--force")
	}
	h.must("storage", "volume", "delete", "default", "data1")
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}
