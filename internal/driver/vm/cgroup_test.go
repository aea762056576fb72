package vm

import (
	"reflect"
	"testing"

	"tandem/internal/driver/vm/qemucmd"
)

func TestQEMULimits(t *testing.T) {
	kvm := qemuLimits(qemucmd.Config{Accel: qemucmd.AccelKVM, MemoryMiB: 1024, VCPUs: 2}, true)
	if want := (cgroupLimits{Memory: (1024 + 256 + 128) << 20, CPUQuota: 2 * cpuPeriod}); kvm != want {
		t.Errorf("kvm, 1 GiB, 2 vCPUs, limits.cpu set: %+v, want %+v", kvm, want)
	}
	tcg := qemuLimits(qemucmd.Config{Accel: qemucmd.AccelTCG, MemoryMiB: 512, VCPUs: 1}, false)
	if want := (cgroupLimits{Memory: (512 + 256 + 64 + 1024) << 20}); tcg != want {
		t.Errorf("tcg, 512 MiB, no limits.cpu: %+v, want %+v", tcg, want)
	}
}

func TestCgroupFiles(t *testing.T) {
	l := cgroupLimits{Memory: 1 << 30, CPUQuota: 150000}
	v2 := cgroupFiles(true, "/tandem/x", l)
	if want := map[string][][2]string{"/sys/fs/cgroup/tandem/x": {{"memory.max", "1073741824"}, {"cpu.max", "150000 100000"}}}; !reflect.DeepEqual(v2, want) {
		t.Errorf("v2: %v", v2)
	}
	v1 := cgroupFiles(false, "/tandem/x", cgroupLimits{Memory: 1 << 30})
	want := map[string][][2]string{
		"/sys/fs/cgroup/memory/tandem/x": {{"memory.limit_in_bytes", "1073741824"}},
		"/sys/fs/cgroup/cpu/tandem/x":    {{"cpu.cfs_period_us", "100000"}, {"cpu.cfs_quota_us", "-1"}},
	}
	if !reflect.DeepEqual(v1, want) {
		t.Errorf("v1 without a cpu cap: %v", v1)
	}
	if got := cgroupFiles(true, "/t/x", cgroupLimits{Memory: 1})["/sys/fs/cgroup/t/x"][1][1]; got != "max 100000" {
		t.Errorf("v2 without a cpu cap: cpu.max %q", got)
	}
}
