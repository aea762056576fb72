package system

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"tandem/api"
)

// asNobody runs a command as the host's nobody (uid and gid 65534, no other groups) and returns
// its output and whether it succeeded.
func asNobody(name string, args ...string) (string, bool) {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err == nil
}

// Container roots are out of host users' reach: as nobody, no path to a container's files that the
// state dir offers (its volume on the pool, a snapshot of it, its bundle and the mounts there) can
// be listed, read or run (a setuid binary the container's root planted there), on a dir, a btrfs
// and a shared pool; and the containers still start and see their files.
func TestContainerRootsPrivate(t *testing.T) {
	h := rootsDaemon(t)
	shared, err := os.MkdirTemp("", "tdsh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o711) // what a mounted shared filesystem would be: no protection of its own
	h.must("storage", "pool", "create", "sh", "shared", "--source", shared)
	pools := []string{"default", "sh"}
	if exec.Command("modprobe", "btrfs").Run(); strings.Contains(storRead("/proc/filesystems"), "btrfs") {
		h.must("storage", "pool", "create", "fast", "btrfs", "--size", "1GiB")
		pools = append(pools, "fast")
	} else {
		t.Log("no btrfs module: the btrfs pool is not tried")
	}
	for _, pool := range pools {
		name := "c-" + pool
		args := []string{"launch", "busybox", name, "--storage", pool}
		if pool == "sh" {
			args = append(args, "-c", "limits.disk=64MiB")
		} // on the dir pool without a size, a plain tree
		h.must(args...)
		h.sh(name, "echo secret > /secret; chmod 644 /secret; cp /bin/busybox /suid; chmod 4755 /suid; sync")
		h.must("snapshot", "create", name, "s0")
	}

	// A volume attached to a container is mounted on the host: no more open than the root.
	h.must("storage", "volume", "create", "default", "data1", "--size", "16MiB")
	h.must("volume", "attach", "c-default", "data1", "/mnt/data")
	h.sh("c-default", "echo secret > /mnt/data/secret; chmod 644 /mnt/data/secret; cp /bin/busybox /mnt/data/suid; chmod 4755 /mnt/data/suid; sync")

	// Every place a container's files show on the host, checked as root first so that the test
	// cannot pass by looking in the wrong place.
	var files []string
	for _, pool := range pools {
		var p api.StoragePool
		json.Unmarshal([]byte(h.must("storage", "pool", "info", pool, "--format", "json")), &p)
		name := "c-" + pool
		for _, dir := range []string{filepath.Join(p.Path, "volumes", "container", name), filepath.Join(p.Path, "snapshots", "container", name+"@s0")} {
			if img := filepath.Join(dir, "root.img"); storRead(img) != "" {
				files = append(files, img)
			} else {
				files = append(files, filepath.Join(dir, "secret"))
			}
		}
	}
	volumes, _ := filepath.Glob(filepath.Join(h.dir, "storage", "mounts", "*", "*", "data1", "secret"))
	if len(volumes) != 1 {
		t.Fatalf("the attached volume's file on the host: %v", volumes)
	}
	files = append(files, volumes...)
	bundles, _ := filepath.Glob(filepath.Join(h.dir, "containers", "*", "rootfs*", "secret"))
	if len(bundles) < len(pools) {
		t.Fatalf("found %d containers' files through their bundles, want at least %d: %v", len(bundles), len(pools), bundles)
	}
	files = append(files, bundles...)
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("as root: %v", err)
		}
		if out, ok := asNobody("cat", f); ok {
			t.Errorf("nobody reads %s: %q", f, out)
		}
		if out, ok := asNobody("ls", filepath.Dir(f)); ok {
			t.Errorf("nobody lists %s: %q", filepath.Dir(f), out)
		}
		if suid := filepath.Join(filepath.Dir(f), "suid"); filepath.Base(f) == "secret" {
			if _, ok := asNobody("test", "-x", suid); ok { // busybox drops setuid itself: ask the kernel
				t.Errorf("nobody can run the container's setuid %s", suid)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d paths to container files, none open to nobody", len(files))

	for _, pool := range pools {
		name := "c-" + pool
		h.must("restart", name)
		if got := h.sh(name, "cat /secret; id -u"); got != "secret\n0" {
			t.Fatalf("%s after a restart: %q", name, got)
		}
		if pool == "default" {
			if got := h.sh(name, "cat /mnt/data/secret"); got != "secret" {
				t.Fatalf("the volume in %s after a restart: %q", name, got)
			}
			h.must("volume", "detach", name, "data1")
		}
		h.must("delete", "--force", name)
	}
}
