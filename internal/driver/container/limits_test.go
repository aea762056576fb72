package container

import (
	"testing"
)

func TestResources(t *testing.T) {
	r, err := resources(map[string]string{
		"limits.memory": "64MiB", "limits.processes": "50", "limits.cpu": "2", "limits.cpu.allowance": "50%",
	}, false, "")
	if err != nil {
		t.Fatal(err)
	}
	if *r.Memory.Limit != 64<<20 || *r.Memory.Swap != 64<<20 {
		t.Errorf("memory %d swap %d", *r.Memory.Limit, *r.Memory.Swap)
	}
	if *r.Pids.Limit != 50 {
		t.Errorf("pids %d", *r.Pids.Limit)
	}
	if *r.CPU.Quota != 200000 || *r.CPU.Period != 100000 || *r.CPU.Shares != 512 || r.CPU.Cpus != "" {
		t.Errorf("cpu %+v", r.CPU)
	}
	if len(r.Devices) != 1 || r.Devices[0].Allow {
		t.Errorf("devices %+v: want deny-all (runc adds its defaults)", r.Devices)
	}

	r, _ = resources(map[string]string{"limits.memory": "1GiB", "limits.memory.swap": "true",
		"limits.cpu": "0-1", "limits.cpu.allowance": "25ms/100ms"}, false, "")
	if *r.Memory.Swap != -1 || r.CPU.Cpus != "0-1" || *r.CPU.Quota != 25000 || *r.CPU.Period != 100000 {
		t.Errorf("swap %d cpu %+v", *r.Memory.Swap, r.CPU)
	}

	// An update resets what the config no longer sets.
	r, _ = resources(map[string]string{"limits.processes": "10"}, true, "0-1")
	if *r.Memory.Limit != -1 || *r.Memory.Swap != -1 || *r.CPU.Quota != -1 || r.CPU.Cpus != "0-1" ||
		*r.CPU.Shares != 1024 || *r.Pids.Limit != 10 || r.Devices != nil {
		t.Errorf("reset %+v %+v %+v", r.Memory, r.CPU, r.Pids)
	}

	for _, bad := range []map[string]string{
		{"limits.memory": "lots"}, {"limits.processes": "0"}, {"limits.cpu": "0"}, {"limits.cpu": "a-b"},
		{"limits.cpu.allowance": "150%"}, {"limits.cpu.allowance": "25/100"},
	} {
		if _, err := resources(bad, false, ""); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
