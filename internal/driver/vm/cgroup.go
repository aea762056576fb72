package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"tandem/internal/driver/vm/qemucmd"
)

// Each QEMU runs in a cgroup of its own, /<CgroupParent>/<id> (beside the containers', whose
// cgroups are named the same way), so that what it may take of the host is bounded as a
// container's is: memory by the guest's RAM plus QEMU's own overhead, CPU by limits.cpu.

const (
	cgroupRoot = "/sys/fs/cgroup"
	cpuPeriod  = 100000 // µs, the kernel's default CFS period
)

// cgroupLimits are a QEMU's bounds: bytes of memory, and µs of CPU per cpuPeriod (0: no cap).
type cgroupLimits struct {
	Memory   int64
	CPUQuota int64
}

// qemuLimits bounds a VM of qc. Memory is the guest's RAM plus QEMU's overhead: 256 MiB and an
// eighth of the RAM for its own allocations (device state, I/O buffers, page tables), and 1 GiB
// more under TCG, whose translation cache grows up to that size. CPU is capped only when
// limits.cpu is set, as for containers: the vCPUs and QEMU's own threads share that many CPUs.
func qemuLimits(qc qemucmd.Config, cpuSet bool) cgroupLimits {
	ram := int64(qc.MemoryMiB) << 20
	l := cgroupLimits{Memory: ram + 256<<20 + ram/8}
	if qc.Accel == qemucmd.AccelTCG {
		l.Memory += 1 << 30
	}
	if cpuSet {
		l.CPUQuota = int64(qc.VCPUs) * cpuPeriod
	}
	return l
}

// cgroupPath is a VM's cgroup below each hierarchy's root; "" when the driver has no parent.
func (d *Driver) cgroupPath(id string) string {
	if d.opts.CgroupParent == "" {
		return ""
	}
	return "/" + d.opts.CgroupParent + "/" + id
}

// cgroupV2 says whether the host has the unified hierarchy only.
func cgroupV2() bool {
	_, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers"))
	return err == nil
}

// cgroupFiles are the files to write, by directory, to make the cgroup path with limits l.
func cgroupFiles(v2 bool, path string, l cgroupLimits) map[string][][2]string {
	cpu := "max"
	if l.CPUQuota > 0 {
		cpu = strconv.FormatInt(l.CPUQuota, 10)
	}
	mem := strconv.FormatInt(l.Memory, 10)
	if v2 {
		return map[string][][2]string{cgroupRoot + path: {{"memory.max", mem}, {"cpu.max", cpu + " " + strconv.Itoa(cpuPeriod)}}}
	}
	quota := "-1"
	if l.CPUQuota > 0 {
		quota = cpu
	}
	return map[string][][2]string{
		cgroupRoot + "/memory" + path: {{"memory.limit_in_bytes", mem}},
		cgroupRoot + "/cpu" + path:    {{"cpu.cfs_period_us", strconv.Itoa(cpuPeriod)}, {"cpu.cfs_quota_us", quota}},
	}
}

// joinCgroup makes the VM's cgroup with limits l and moves pids (QEMU, just started, and its
// helpers; 0 is skipped) into it.
func (d *Driver) joinCgroup(id string, l cgroupLimits, pids ...int) error {
	path := d.cgroupPath(id)
	if path == "" {
		return nil
	}
	v2 := cgroupV2()
	if v2 { // the controllers must be enabled in every cgroup above the leaf
		dir := cgroupRoot
		for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +cpu"), 0o644); err != nil {
				return fmt.Errorf("enable memory and cpu in %s: %w", dir, err)
			}
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
				return err
			}
		}
	}
	for dir, files := range cgroupFiles(v2, path, l) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, f := range files {
			if err := os.WriteFile(filepath.Join(dir, f[0]), []byte(f[1]), 0o644); err != nil {
				return fmt.Errorf("%s/%s: %w", dir, f[0], err)
			}
		}
		for _, pid := range pids {
			if pid == 0 {
				continue
			}
			err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644)
			if err != nil && !errors.Is(err, syscall.ESRCH) { // a helper already gone is its own business
				return fmt.Errorf("move pid %d into %s: %w", pid, dir, err)
			}
		}
	}
	return nil
}

// removeCgroup removes the VM's cgroup from every hierarchy once QEMU is gone (a cgroup with a
// process left in it stays, and the next start reuses it).
func (d *Driver) removeCgroup(id string) {
	path := d.cgroupPath(id)
	if path == "" {
		return
	}
	dirs, _ := filepath.Glob(cgroupRoot + "/*" + path)
	for _, dir := range append(dirs, cgroupRoot+path) {
		os.Remove(dir)
	}
}
