package container

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sweepCgroup kills whatever still runs in a container's cgroup and removes the cgroup, in every
// hierarchy (v1 and v2). `runc delete --force` does this for a container runc knows; a runc
// restore killed midway (a cancelled context, a page server that never answers) leaves restored
// tasks that runc never recorded: on a migration's destination that would be a second copy,
// holding the instance's addresses.
func sweepCgroup(cgroupPath string) error {
	dirs := cgroupDirs(cgroupPath)
	if len(dirs) == 0 {
		return nil
	}
	for _, dir := range dirs { // frozen tasks take no signal
		os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644)
		os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0o644)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		pids := cgroupPids(dirs)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v do not die", cgroupPath, pids)
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, dir := range dirs {
		removeCgroupTree(dir)
	}
	return nil
}

// cgroupPids lists the processes in the cgroups dirs and their descendants.
func cgroupPids(dirs []string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
			if err != nil || de.IsDir() || de.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(data)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupTree removes a cgroup and its children, deepest first (cgroup directories go
// with rmdir only).
func removeCgroupTree(dir string) {
	var sub []string
	filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err == nil && de.IsDir() {
			sub = append(sub, path)
		}
		return nil
	})
	for i := len(sub) - 1; i >= 0; i-- {
		os.Remove(sub[i])
	}
}

// delegatedFiles are the files of a cgroup that its delegatee may write, per the kernel's
// delegation model (cgroup-v2.rst "Delegation"; v1 has tasks instead of cgroup.threads):
// membership and enabling controllers below, never the limits on the cgroup itself.
var delegatedFiles = []string{"tasks", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"}

// delegateCgroup hands a user-namespaced container's cgroup, in every hierarchy, to its root
// (host uid and gid rootID), as LXC and Incus do: systemd as init then makes init.scope and its
// units' cgroups below it. The container sees that subtree alone (its cgroup namespace is
// rooted there), cannot write the limits on its own cgroup (their files stay the host's root's),
// and what it makes below them is bounded by them, as cgroups are hierarchical. A privileged
// container needs no delegation: its root is the host's.
func delegateCgroup(cgroupPath string, rootID uint32) error {
	dirs := cgroupDirs(cgroupPath)
	for _, dir := range dirs {
		if err := os.Chown(dir, int(rootID), int(rootID)); err != nil {
			return fmt.Errorf("delegate cgroup %s: %w", dir, err)
		}
		for _, f := range delegatedFiles {
			if err := os.Chown(filepath.Join(dir, f), int(rootID), int(rootID)); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("delegate cgroup %s: %w", dir, err)
			}
		}
	}
	return nil
}
