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

// State and recovery across daemon crashes: a lost state file, a crash mid-snapshot, a full pool
// under a VM.

// info reads one instance through the CLI.
func (d *daemonHarness) info(name string) api.Instance {
	d.t.Helper()
	var inst api.Instance
	if err := json.Unmarshal([]byte(d.must("info", name, "--format", "json")), &inst); err != nil {
		d.t.Fatal(err)
	}
	return inst
}

// waitInfo polls an instance until ok says yes, failing the test after timeout.
func (d *daemonHarness) waitInfo(name string, timeout time.Duration, what string, ok func(api.Instance) bool) api.Instance {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		inst := d.info(name)
		if ok(inst) {
			return inst
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("%s: not %s within %s: %+v", name, what, timeout, inst)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// With state.db deleted, the daemon starts knowing nothing while the old container runs on. It
// must say so (log and `host orphans`), refuse to start a second copy on the orphan's root with
// --existing-root, and leave that root alone; `tandemd --recover` then re-adopts it.
func TestRecoveryLostStateFileOrphans(t *testing.T) {
	h := rootsDaemon(t)
	h.must("launch", "busybox", "d1")
	h.sh("d1", "echo mine > /root/mark")

	h.stop(syscall.SIGKILL)
	if err := os.Remove(filepath.Join(h.dir, "state.db")); err != nil {
		t.Fatal(err)
	}
	h.start()
	if list := instances(t, h); len(list) != 0 {
		t.Fatalf("a fresh state file lists %d instances", len(list))
	}
	if !strings.Contains(h.log.String(), "orphans found") {
		t.Fatalf("the daemon did not report the orphans at start:\n%s", h.log)
	}
	var orphans []api.Orphan
	if err := json.Unmarshal([]byte(h.must("host", "orphans", "--format", "json")), &orphans); err != nil {
		t.Fatal(err)
	}
	var guest, root *api.Orphan
	for i, o := range orphans {
		switch o.Kind {
		case "instance":
			guest = &orphans[i]
		case "root":
			root = &orphans[i]
		}
	}
	if guest == nil || guest.Status != api.StatusRunning || root == nil || root.Volume != "container/d1" ||
		!strings.Contains(root.HeldBy, "as its root") {
		t.Fatalf("orphans %+v: want the running container and its held root", orphans)
	}
	t.Logf("orphans: %+v", orphans)

	// No second copy on the running orphan's root; the error says why.
	_, errOut, err := h.tandem("launch", "busybox", "d1", "--existing-root")
	if err == nil || !strings.Contains(errOut, "in use on this host") || !strings.Contains(errOut, "host orphans") {
		t.Fatalf("launch --existing-root on a held root: err %v, %s", err, errOut)
	}
	if list := instances(t, h); len(list) != 0 {
		t.Fatalf("the refused launch left instances: %+v", list)
	}
	// The orphan's root is intact.
	mark := filepath.Join(h.dir, "storage", "pools", "default", "volumes", "container", "d1", "root", "mark")
	if _, err := os.Stat(mark); err != nil {
		t.Fatalf("the orphan's root lost its files: %v", err)
	}

	// tandemd --recover re-adopts it from its record copy: managed again, as it was.
	h.stop(syscall.SIGTERM)
	h.args = append(h.args, "--recover")
	h.start()
	if inst := h.info("d1"); inst.Status != api.StatusRunning {
		t.Fatalf("re-adopted d1 is %s", inst.Status)
	}
	if got := h.sh("d1", "cat /root/mark"); got != "mine" {
		t.Fatalf("re-adopted d1 runs from another root: %q", got)
	}
	if out := h.must("host", "orphans", "--format", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("orphans after re-adoption: %s", out)
	}
	h.must("delete", "--force", "d1")
	if _, err := os.Stat(mark); !os.IsNotExist(err) {
		t.Fatalf("root left after deleting the re-adopted instance: %v", err)
	}
}

// A daemon SIGKILLed while a snapshot has the container frozen leaves it frozen; the next start
// thaws it (the pause was the snapshot's, and the instance should run).
func TestRecoveryUndoesSnapshotPause(t *testing.T) {
	h := rootsDaemon(t)
	h.must("launch", "busybox", "c1")
	// A large-ish root makes the snapshot's copy, during which the container is frozen, last.
	h.sh("c1", "dd if=/dev/zero of=/root/big bs=1M count=768 2>/dev/null; sync")

	ctx := testenv.Context(t, 2*time.Minute)
	snap := exec.CommandContext(ctx, filepath.Join(binaries(t), "tandem"), "--dir", h.dir, "snapshot", "create", "c1", "s1")
	if err := snap.Start(); err != nil {
		t.Fatal(err)
	}
	defer snap.Wait()
	defer snap.Process.Kill()
	h.waitInfo("c1", 30*time.Second, "frozen by the snapshot", func(i api.Instance) bool { return i.Status == api.StatusPaused })
	h.stop(syscall.SIGKILL)
	h.start()

	inst := h.info("c1")
	if inst.Status != api.StatusRunning || inst.DesiredPower != api.PowerRunning {
		t.Fatalf("after the crash mid-snapshot: %s (desired %s), want Running\n%s", inst.Status, inst.DesiredPower, h.log)
	}
	h.must("exec", "c1", "--", "true")
	if !strings.Contains(h.log.String(), "had left paused") {
		t.Fatalf("recovery did not say it resumed the instance:\n%s", h.log)
	}
}

// A VM whose pool fills up is paused by QEMU: the instance says why, a resume that cannot hold
// fails with that reason (not exit 0), and once space is freed it resumes.
func TestRecoveryVMFullPool(t *testing.T) {
	h := rootsDaemon(t)
	mnt, err := os.MkdirTemp("", "tdfull-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run(); os.Remove(mnt) })
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1600M", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	h.must("storage", "pool", "create", "small", "dir", "--source", filepath.Join(mnt, "pool"))
	h.must("launch", "busybox", "v1", "--vm", "--storage", "small", "-c", "limits.disk=1GiB", "-c", "limits.memory=256MiB")
	waitAgent(t, h, "v1")

	// Something else fills the pool's filesystem.
	filler := filepath.Join(mnt, "filler")
	var st syscall.Statfs_t
	syscall.Statfs(mnt, &st)
	free := int64(st.Bavail) * st.Bsize
	if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(free-(4<<20), 10), filler).CombinedOutput(); err != nil {
		t.Fatalf("fallocate: %v %s", err, out)
	}
	// The guest writes more than is left; the exec returns at once, the writer runs on.
	h.must("exec", "v1", "--", "sh", "-c", "dd if=/dev/urandom of=/root/f bs=1M count=64 conv=fsync >/dev/null 2>&1 </dev/null &")
	inst := h.waitInfo("v1", 2*time.Minute, "paused by QEMU", func(i api.Instance) bool { return i.Status == api.StatusPaused })
	if !strings.Contains(inst.StatusError, "disk I/O error") || !strings.Contains(inst.StatusError, "no space left") {
		t.Fatalf("paused VM's status error %q does not say the pool is full", inst.StatusError)
	}
	_, errOut, err := h.tandem("resume", "v1")
	if err == nil || !strings.Contains(errOut, "no space left") {
		t.Fatalf("resume into a full pool: err %v, %s", err, errOut)
	}
	if got := h.info("v1"); got.Status != api.StatusPaused {
		t.Fatalf("after the refused resume: %s", got.Status)
	}

	os.Remove(filler)
	h.must("resume", "v1")
	h.waitInfo("v1", 2*time.Minute, "running with its write done", func(i api.Instance) bool {
		return i.Status == api.StatusRunning && i.StatusError == ""
	})
	h.must("exec", "v1", "--", "true")
	h.must("delete", "--force", "v1")
}
