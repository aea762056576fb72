package container

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"tandem/internal/errdefs"
	"tandem/internal/units"
)

const (
	cfsPeriod     = 100000 // µs, the kernel's default CFS period
	defaultShares = 1024   // cgroup v1 cpu.shares default; runc maps shares to cpu.weight on v2
)

// resources turns the limits.* keys of an instance config into cgroup resources, the same for
// cgroup v1 and v2 (runc translates). With reset, every limit the config does not set is given
// its unlimited value, because `runc update` reads an absent value as "leave as is"; hostCPUs is
// then the cpuset to return to when limits.cpu no longer pins.
//
//	limits.cpu=N            CFS quota of N CPUs (N*100ms per 100ms)
//	limits.cpu=0-1,3        pinned to those CPUs (cpuset)
//	limits.cpu.allowance    "50%": a share of CPU time under contention (cpu.shares 512);
//	                        "25ms/100ms": a hard quota (overrides a count's quota)
//	limits.memory           memory limit; swap is off (memory+swap = memory) unless
//	limits.memory.swap=true
//	limits.processes        pids limit
func resources(config map[string]string, reset bool, hostCPUs string) (*specs.LinuxResources, error) {
	r := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if reset {
		r.Devices = nil // runc update does not touch device rules
		r.Memory = &specs.LinuxMemory{Limit: i64(-1), Swap: i64(-1)}
		r.CPU = &specs.LinuxCPU{Quota: i64(-1), Period: u64(cfsPeriod), Shares: u64(defaultShares), Cpus: hostCPUs}
		r.Pids = &specs.LinuxPids{Limit: i64(-1)}
	}
	cpu := func() *specs.LinuxCPU {
		if r.CPU == nil {
			r.CPU = &specs.LinuxCPU{}
		}
		return r.CPU
	}

	if v := config["limits.memory"]; v != "" {
		n, err := units.ParseSize(v)
		if err != nil || n == 0 || n > 1<<62 {
			return nil, errdefs.Invalid("limits.memory %q: want a size like 512MiB", v)
		}
		limit := int64(n)
		swap := limit // memory+swap = memory: no swap
		if config["limits.memory.swap"] == "true" {
			swap = -1
		}
		r.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	if v := config["limits.processes"]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return nil, errdefs.Invalid("limits.processes %q: want a positive integer", v)
		}
		r.Pids = &specs.LinuxPids{Limit: &n}
	}
	if v := config["limits.cpu"]; v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			if n < 1 {
				return nil, errdefs.Invalid("limits.cpu %q: want a count of at least 1 or a set like 0-1", v)
			}
			cpu().Quota, cpu().Period = i64(int64(n)*cfsPeriod), u64(cfsPeriod)
		} else {
			if err := checkCPUSet(v); err != nil {
				return nil, errdefs.Invalid("limits.cpu %q: %v", v, err)
			}
			cpu().Cpus = v
		}
	}
	if v := config["limits.cpu.allowance"]; v != "" {
		if err := allowance(v, cpu()); err != nil {
			return nil, errdefs.Invalid("limits.cpu.allowance %q: %v", v, err)
		}
	}
	return r, nil
}

// allowance applies "50%" as a relative share or "25ms/100ms" as a hard quota.
func allowance(v string, c *specs.LinuxCPU) error {
	if p, ok := strings.CutSuffix(v, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 {
			return fmt.Errorf("a percentage must be 1%%-100%%")
		}
		c.Shares = u64(uint64(max(2, defaultShares*n/100)))
		return nil
	}
	q, per, ok := strings.Cut(v, "/")
	if !ok {
		return fmt.Errorf("want a percentage (50%%) or a quota (25ms/100ms)")
	}
	quota, err1 := parseMs(q)
	period, err2 := parseMs(per)
	if err1 != nil || err2 != nil || quota < 1 || period < 1 || period > 1000 {
		return fmt.Errorf("want a quota like 25ms/100ms (period at most 1000ms)")
	}
	c.Quota, c.Period = i64(quota*1000), u64(uint64(period*1000))
	return nil
}

func parseMs(s string) (int64, error) {
	v, ok := strings.CutSuffix(s, "ms")
	if !ok {
		return 0, fmt.Errorf("no ms unit")
	}
	return strconv.ParseInt(v, 10, 64)
}

// checkCPUSet accepts a cpuset list like "0-3,6".
func checkCPUSet(v string) error {
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return fmt.Errorf("want a CPU count or a set like 0-3,6")
		}
		if isRange {
			if b, err := strconv.Atoi(hi); err != nil || b < a {
				return fmt.Errorf("want a CPU count or a set like 0-3,6")
			}
		}
	}
	return nil
}

// onlineCPUs is the host's CPU list, what a cpuset returns to when a pin is removed.
func onlineCPUs() string {
	data, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }
