package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// proc is one host process, as /proc shows it.
type proc struct {
	pid, ppid int
	exe       string   // what /proc/PID/exe points to
	argv      []string // its command line
}

// scanProcs lists the host's processes; ones that end while it reads are left out.
func scanProcs() []proc {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []proc
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(d + "/cmdline")
		if err != nil || len(cmdline) == 0 {
			continue // gone, or a kernel thread
		}
		exe, _ := os.Readlink(d + "/exe")
		out = append(out, proc{pid: pid, ppid: statusField(pid, "PPid"), exe: exe,
			argv: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")})
	}
	return out
}

// rss is a process's resident set in bytes.
func rss(pid int) int64 { return int64(statusField(pid, "VmRSS")) << 10 }

// pss is a process's proportional set in bytes: a page shared by k processes counts 1/k.
func pss(pid int) int64 {
	return int64(fieldKB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss")) << 10
}

// statusField reads a number from /proc/PID/status (kB for sizes), 0 if absent.
func statusField(pid int, key string) int { return fieldKB(fmt.Sprintf("/proc/%d/status", pid), key) }

// fieldKB reads the first number after "key:" in a /proc file of such lines.
func fieldKB(path, key string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			n, _ := strconv.Atoi(strings.Fields(v + " 0")[0])
			return n
		}
	}
	return 0
}

// cgroupV2 reports whether /sys/fs/cgroup is the unified hierarchy.
func cgroupV2() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

func cgroupVersion() string {
	if cgroupV2() {
		return "v2"
	}
	return "v1"
}

// cgroupMemory reads the memory usage of the cgroup at path (a runc cgroupsPath like /tandem/ID):
// memory.current on cgroup v2, memory.usage_in_bytes of the memory hierarchy on v1.
func cgroupMemory(path string) (int64, error) {
	file := filepath.Join("/sys/fs/cgroup", path, "memory.current")
	if !cgroupV2() {
		file = filepath.Join("/sys/fs/cgroup/memory", path, "memory.usage_in_bytes")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
}

// removeCgroup removes an empty cgroup directory from every hierarchy that has it.
func removeCgroup(path string) {
	dirs := []string{filepath.Join("/sys/fs/cgroup", path)}
	if !cgroupV2() {
		dirs, _ = filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", path))
	}
	for _, d := range dirs {
		os.Remove(d) // rmdir: only an empty cgroup goes
	}
}

// untilOK calls try until it succeeds and returns the time since start.
func untilOK(ctx context.Context, start time.Time, try func(context.Context) error) (time.Duration, error) {
	for {
		err := try(ctx)
		if err == nil {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%w (last try: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// quantile is the q-quantile of v by nearest rank (the median of an even count averages the two
// middle values).
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if q == 0.5 && len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
