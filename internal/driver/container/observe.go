package container

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"tandem/internal/driver"
)

// observe reads a container's status from files, without running runc: a `runc state` is a
// process of ~20 ms, once per container in every list and every exec. It answers as runc would:
//   - runc has no state directory for it: stopped;
//   - runc's exec fifo is still there (created, init waits for a start that was cut short): stopped;
//   - the init pid the shim recorded is gone, a zombie, or a recycled pid outside the container's
//     cgroup: stopped;
//   - else paused if its freezer is frozen (or freezing), running if not.
//
// It returns init's pid with running and paused.
func (d *Driver) observe(id string) (driver.Status, int) {
	runcDir := filepath.Join(d.runc.Root, id)
	if _, err := os.Stat(filepath.Join(runcDir, "state.json")); err != nil {
		return driver.StatusStopped, 0
	}
	if _, err := os.Stat(filepath.Join(runcDir, "exec.fifo")); err == nil {
		return driver.StatusStopped, 0
	}
	pid := readPid(d.paths(id).initPid)
	if pid <= 0 || !liveIn(pid, d.cgroupsPath(id)) {
		return driver.StatusStopped, 0
	}
	if frozenCgroups(freezerDirs(d.cgroupsPath(id))) {
		return driver.StatusPaused, pid
	}
	return driver.StatusRunning, pid
}

// liveIn reports whether pid is a live (not zombie) process in cgroup path or below it.
func liveIn(pid int, path string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may hold anything.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	return err == nil && cgroupFileHas(string(cg), path)
}

// cgroupFileHas reports whether a /proc/PID/cgroup text puts the process in path or below it, in
// any hierarchy.
func cgroupFileHas(text, path string) bool {
	for _, line := range strings.Split(text, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && (parts[2] == path || strings.HasPrefix(parts[2], path+"/")) {
			return true
		}
	}
	return false
}

// freezerDirs are the directories that can freeze cgroup path: the v1 freezer, and the v2
// cgroup (unified or hybrid mount). Only those that exist matter to frozenCgroups.
func freezerDirs(path string) []string {
	return []string{"/sys/fs/cgroup/freezer" + path, "/sys/fs/cgroup" + path, "/sys/fs/cgroup/unified" + path}
}
