package system

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/testenv"
)

// Instance root disks on storage pools, through the CLI: btrfs clones and quotas, ext4 roots on a
// shared pool, VM roots sized by limits.disk, snapshots and restores of both kinds, and two
// daemons on one shared pool that never run one disk at once.

// rootsDaemon starts a daemon for root disk tests, without networks, that deletes its instances
// and pools before it stops and leaves no mount behind.
func rootsDaemon(t *testing.T, flags ...string) *daemonHarness {
	t.Helper()
	testenv.Require(t, realDrivers...)
	testenv.Require(t, "e2fsprogs", "qemu-img")
	var h *daemonHarness
	t.Cleanup(func() { // after the daemon stopped (registered first, so it runs last)
		if h != nil {
			unmountUnder(t, h.dir)
		}
	})
	h = startDaemon(t, append([]string{"--accel", "tcg", "--network=false"}, flags...)...)
	t.Cleanup(func() {
		for _, inst := range instances(t, h) {
			h.tandem("delete", "--force", inst.Name)
		}
		var pools []api.StoragePool
		out, _, _ := h.tandem("storage", "pool", "list", "--format", "json")
		json.Unmarshal([]byte(out), &pools)
		for _, p := range pools {
			if p.Name != "default" {
				h.tandem("storage", "pool", "delete", p.Name)
			}
		}
	})
	h.must("image", "build", "busybox")
	return h
}

// unmountUnder lazily unmounts what a failed test left mounted under dir.
func unmountUnder(t *testing.T, dir string) {
	mounts, _ := os.ReadFile("/proc/mounts")
	var left []string
	for _, l := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], dir) {
			left = append(left, f[1])
		}
	}
	for i := len(left) - 1; i >= 0; i-- {
		exec.Command("umount", "-l", left[i]).Run()
	}
	if len(left) > 0 && !t.Failed() {
		t.Errorf("mounts left under %s: %v", dir, left)
	}
}

// sh runs a shell script in an instance and returns its output, failing the test on error.
func (d *daemonHarness) sh(name, script string) string {
	d.t.Helper()
	return strings.TrimSpace(d.must("exec", name, "--", "sh", "-c", script))
}

// fails runs the CLI expecting an error that says all of words.
func (d *daemonHarness) fails(words []string, args ...string) {
	d.t.Helper()
	out, errOut, err := d.tandem(args...)
	if err == nil {
		d.t.Fatalf("tandem %s succeeded: %s", strings.Join(args, " "), out)
	}
	for _, w := range words {
		if !strings.Contains(errOut, w) {
			d.t.Fatalf("tandem %s: %q does not say %q", strings.Join(args, " "), errOut, w)
		}
	}
}

func timed(f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}

// fill writes MiB of zeros into path in an instance, or as much as its disk takes; it returns what
// dd said, its exit code (rc=N) and the MiB written.
func (d *daemonHarness) fill(name, path string, mib int) string {
	d.t.Helper()
	const script = `dd if=/dev/zero of=$1 bs=1M count=$2 conv=fsync 2>&1; echo "rc=$?"; ls -l $1 | awk '{print int($5/1048576)}'`
	out := strings.TrimSpace(d.must("exec", name, "--", "sh", "-c", script, "sh", path, strconv.Itoa(mib)))
	d.t.Logf("%s: writing %d MiB to %s: %s", name, mib, path, strings.ReplaceAll(out, "\n", " | "))
	return out
}

// A btrfs pool on a loop file: a second container of an image is a snapshot of the pool's copy of
// it (instant, blocks shared), a quota (limits.disk) stops a container that fills its disk and
// nothing else, and snapshots are subvolume snapshots.
func TestRootsBtrfs(t *testing.T) {
	testenv.Require(t, "btrfs-module")
	h := rootsDaemon(t)
	h.must("storage", "pool", "create", "fast", "btrfs", "--size", "1GiB")
	first := timed(func() { h.must("create", "busybox", "c1", "--storage", "fast") })
	clone := timed(func() { h.must("create", "busybox", "c2", "--storage", "fast") })
	t.Logf("create on btrfs: first %s (the image is copied into the pool), clone %s", first.Round(time.Millisecond), clone.Round(time.Millisecond))
	if clone > 3*time.Second {
		t.Fatalf("a clone took %s", clone)
	}
	var pool api.StoragePool
	json.Unmarshal([]byte(h.must("storage", "pool", "info", "fast", "--format", "json")), &pool)
	total, excl := storBtrfsDU(t, filepath.Join(pool.Path, "volumes/container/c2"))
	t.Logf("clone c2: %d bytes referenced, %d exclusive", total, excl)
	if total < 1<<20 || excl > total/10 {
		t.Fatalf("the clone does not share its blocks with the image: %d referenced, %d exclusive", total, excl)
	}
	h.must("start", "c1", "c2")
	if got := h.sh("c2", "cat /etc/hostname; stat -c %u /bin/busybox"); got != "c2\n0" {
		t.Fatalf("c2 sees %q", got)
	}

	// The quota: writes fail at the limit, the container and its neighbours carry on.
	h.must("launch", "busybox", "c3", "--storage", "fast", "-c", "limits.disk=64MiB")
	out := h.fill("c3", "/fill", 200)
	if !strings.Contains(out, "quota") && !strings.Contains(out, "space") || strings.Contains(out, "rc=0") {
		t.Fatalf("the quota did not stop the writer: %s", out)
	}
	if got := h.sh("c3", "rm /fill && echo still-here"); got != "still-here" {
		t.Fatalf("c3 after its disk filled: %q", got)
	}
	if out := h.fill("c1", "/fill", 100); !strings.Contains(out, "rc=0") {
		t.Fatalf("a neighbour could not write: %s", out)
	}

	// Snapshot, change, restore.
	h.must("snapshot", "create", "c2", "s0")
	h.sh("c2", "echo changed > /etc/hostname; sync")
	h.must("snapshot", "restore", "c2", "s0")
	if got := h.sh("c2", "cat /etc/hostname"); got != "c2" {
		t.Fatalf("after restore: %q", got)
	}
	h.must("delete", "--force", "c1", "c2", "c3")
	h.must("storage", "pool", "delete", "fast")
}

// A container's root on a shared pool is an ext4 image as big as limits.disk: filling it gets
// ENOSPC and nothing else; stopped, it grows.
func TestRootsSharedExt4(t *testing.T) {
	h := rootsDaemon(t)
	shared := t.TempDir()
	h.must("storage", "pool", "create", "sh", "shared", "--source", shared)
	h.must("launch", "busybox", "c1", "--storage", "sh", "-c", "limits.disk=64MiB")
	var inst api.Instance
	json.Unmarshal([]byte(h.must("info", "c1", "--format", "json")), &inst)
	if inst.Root == nil || inst.Root.Pool != "sh" || !inst.Root.Shared || inst.Root.Volume != "container/c1" {
		t.Fatalf("root %+v", inst.Root)
	}
	if got := h.sh("c1", "stat -c %u /etc/passwd; df -m / | awk 'NR==2 {print $2}'"); !strings.HasPrefix(got, "0\n") || atoi(got[2:]) > 64 {
		t.Fatalf("owner and size of the root: %q", got)
	}
	out := h.fill("c1", "/fill", 200)
	if !strings.Contains(out, "No space left") || strings.Contains(out, "rc=0") {
		t.Fatalf("filling the disk: %s", out)
	}
	if got := h.sh("c1", "rm /fill && echo ok > /root/f && cat /root/f"); got != "ok" {
		t.Fatalf("after the disk filled: %q", got)
	}
	h.fails([]string{"stop it"}, "config", "set", "c1", "limits.disk=128MiB")
	h.must("stop", "c1")
	h.fails([]string{"not shrink"}, "config", "set", "c1", "limits.disk=32MiB")
	h.must("config", "set", "c1", "limits.disk=128MiB")
	h.must("start", "c1")
	if got := h.sh("c1", "cat /root/f; df -m / | awk 'NR==2 {print $2}'"); !strings.HasPrefix(got, "ok\n") || atoi(got[3:]) < 100 {
		t.Fatalf("after growing to 128MiB: %q", got)
	}
	// Memory saved and restored over a root the driver unmounts and mounts again in between.
	testenv.Require(t, "checkpoint")
	h.sh("c1", "setsid sleep 4321 >/dev/null 2>&1 </dev/null &")
	sleeper := "ps | grep -c '[s]leep 4321'"
	h.must("snapshot", "create", "c1", "s1", "--stateful")
	h.must("snapshot", "restore", "c1", "s1")
	h.must("stop", "--stateful", "c1")
	h.must("start", "c1")
	if got := h.sh("c1", sleeper); got != "1" {
		t.Fatalf("after a stateful restore and a stateful stop and start: %q", got)
	}
	h.must("delete", "--force", "c1")
	if ents, _ := os.ReadDir(filepath.Join(shared, "volumes", "container")); len(ents) != 0 {
		t.Fatalf("delete left %v in the pool", ents)
	}
}

// Snapshots of a container on the default pool: a stateless one comes back booted with the old
// files; a stateful one resumes the processes it had.
func TestRootsContainerSnapshots(t *testing.T) {
	testenv.Require(t, "checkpoint")
	h := rootsDaemon(t)
	h.must("launch", "busybox", "c1")
	h.sh("c1", "echo one > /root/f; setsid sleep 1234 >/dev/null 2>&1 </dev/null & sync")
	sleeper := "ps | grep -c '[s]leep 1234'"
	h.must("snapshot", "create", "c1", "s1", "--stateful")
	h.sh("c1", "echo two > /root/f; pkill sleep; sync")
	restore := timed(func() { h.must("snapshot", "restore", "c1", "s1") })
	if got := h.sh("c1", "cat /root/f; "+sleeper); got != "one\n1" {
		t.Fatalf("after the stateful restore (%s): %q", restore.Round(time.Millisecond), got)
	}
	h.must("snapshot", "create", "c1", "s2")
	h.sh("c1", "echo three > /root/f; sync")
	h.must("snapshot", "restore", "c1", "s2")
	if got := h.sh("c1", "cat /root/f; "+sleeper+" || true"); got != "one\n0" {
		t.Fatalf("after the stateless restore: %q", got)
	}
	var snaps []api.InstanceSnapshot
	json.Unmarshal([]byte(h.must("snapshot", "list", "c1", "--format", "json")), &snaps)
	if len(snaps) != 2 || !snaps[0].Stateful || snaps[1].Stateful {
		t.Fatalf("snapshots %+v", snaps)
	}
	h.must("snapshot", "delete", "c1", "s1")
	h.must("delete", "--force", "c1")
	if out := h.must("storage", "volume", "list", "default"); strings.Contains(out, "c1") {
		t.Fatalf("the root and its snapshots outlived the instance:\n%s", out)
	}
}

// A VM's root on a pool is sized by limits.disk, which the guest sees; it is snapshot and
// restored, and grows when stopped.
func TestRootsVM(t *testing.T) {
	h := rootsDaemon(t)
	t0 := time.Now()
	step := func(what string) { t.Logf("%s at %s", what, time.Since(t0).Round(time.Millisecond)) }
	defer step("done")
	h.must("launch", "busybox", "v1", "--vm", "-c", "limits.disk=1GiB", "-c", "limits.memory=256MiB")
	waitAgent(t, h, "v1")
	step("booted")
	if got := h.sh("v1", "cat /sys/block/vda/size"); got != "2097152" { // 1 GiB in 512-byte sectors
		t.Fatalf("the guest sees %q sectors", got)
	}
	h.sh("v1", "echo one > /root/f; sync")
	h.must("snapshot", "create", "v1", "s1")
	h.sh("v1", "echo two > /root/f; sync")
	step("snapshot taken")
	h.must("snapshot", "restore", "v1", "s1")
	step("restored")
	waitAgent(t, h, "v1")
	step("booted again")
	if got := h.sh("v1", "cat /root/f"); got != "one" {
		t.Fatalf("after restore: %q", got)
	}
	h.fails([]string{"running state"}, "snapshot", "create", "v1", "s2", "--stateful")
	h.must("stop", "--force", "v1")
	h.must("config", "set", "v1", "limits.disk=2GiB")
	step("grown")
	h.must("start", "v1")
	waitAgent(t, h, "v1")
	step("booted a third time")
	if got := h.sh("v1", "cat /sys/block/vda/size"); got != "4194304" {
		t.Fatalf("after growing to 2GiB the guest sees %q sectors", got)
	}
	h.must("delete", "--force", "v1")
}

// Two daemons (two state dirs) on one shared pool: the second takes the first's root as its own
// instance's (existing root) and cannot start it while the first runs it, nor while the first,
// SIGKILLed and restarted, still does; once it is stopped there, it can.
func TestRootsTwoDaemonsOneSharedPool(t *testing.T) {
	a := rootsDaemon(t)
	b := rootsDaemon(t, "--idmap-base", "3000000")
	shared := t.TempDir()
	os.Chmod(shared, 0o711) // QEMU runs as tandem-qemu: it must reach the pool
	os.Chmod(filepath.Dir(shared), 0o711)
	os.Chmod(shared, 0o711)
	a.must("storage", "pool", "create", "sh", "shared", "--source", shared)
	b.must("storage", "pool", "create", "sh", "shared", "--source", shared)
	a.must("create", "busybox", "c1", "--storage", "sh", "-c", "limits.disk=64MiB")
	a.must("create", "busybox", "v1", "--vm", "--storage", "sh", "-c", "limits.memory=256MiB")
	b.fails([]string{"already holds", "existing"}, "create", "busybox", "c1", "--storage", "sh")
	b.must("create", "busybox", "c1", "--storage", "sh", "--existing-root")
	b.must("create", "busybox", "v1", "--vm", "--storage", "sh", "--existing-root", "-c", "limits.memory=256MiB")

	a.must("start", "c1", "v1")
	a.sh("c1", "echo from-a > /root/f; sync")
	b.fails([]string{"in use by c1"}, "start", "c1")
	b.fails([]string{"in use by v1"}, "start", "v1")

	// A's daemon dies and comes back: its instances ran on, their disks stayed held.
	a.stop(syscall.SIGKILL)
	b.fails([]string{"in use"}, "start", "c1")
	a.start()
	assertStatus(t, a, "c1", api.StatusRunning)
	b.fails([]string{"in use"}, "start", "c1")
	if got := a.sh("c1", "cat /root/f"); got != "from-a" {
		t.Fatalf("c1 on host a after its daemon restarted: %q", got)
	}

	// Stopped on A, it runs on B from the same disk (its files shifted into B's id range), and A
	// cannot start it back.
	a.must("stop", "c1")
	b.must("start", "c1")
	if got := b.sh("c1", "cat /root/f; stat -c %u /root/f"); got != "from-a\n0" {
		t.Fatalf("c1 on host b: %q", got)
	}
	a.fails([]string{"in use by c1"}, "start", "c1")
	b.must("stop", "c1")
	a.must("start", "c1")
	if got := a.sh("c1", "stat -c %u /root/f"); got != "0" {
		t.Fatalf("c1 back on host a: owner %q", got)
	}

	// B lets go of its instances: the disks stay for A's.
	b.must("delete", "c1", "v1")
	a.must("stop", "--force", "c1", "v1")
	a.must("delete", "c1", "v1")
	if ents, _ := os.ReadDir(filepath.Join(shared, "volumes", "container")); len(ents) != 0 {
		t.Fatalf("the last delete left %v in the pool", ents)
	}
}
