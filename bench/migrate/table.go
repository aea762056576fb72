package main

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// printTable prints each row's medians, then for each kind the ratio of every tandem case to the
// baseline.
func printTable(rows []*row) {
	const format = "%-18s %-7s %-19s %9s %16s %10s\n"
	fmt.Printf(format, "case", "runner", "mode", "total", "freeze/downtime", "sent")
	byKind := map[string][]*row{}
	var kinds []string
	for _, r := range rows {
		if byKind[r.kind] == nil {
			kinds = append(kinds, r.kind)
		}
		byKind[r.kind] = append(byKind[r.kind], r)
	}
	for _, kind := range kinds {
		var plain *row
		for _, r := range byKind[kind] {
			if r.skipped != "" {
				fmt.Printf("%-18s %-7s %s\n", r.name(), r.runner, r.skipped)
				continue
			}
			m := r.median()
			fmt.Printf(format, r.name(), r.runner, r.mode(), secs(m.total), secs(m.pause), mib(m.sent))
			if r.runner == "plain" {
				plain = r
			}
		}
		if plain == nil || len(plain.samples) == 0 {
			continue
		}
		p := plain.median()
		for _, r := range byKind[kind] {
			if r == plain || r.skipped != "" || len(r.samples) == 0 {
				continue
			}
			m := r.median()
			fmt.Printf(format, r.name(), "ratio", "", ratio(float64(m.total), float64(p.total)),
				ratio(float64(m.pause), float64(p.pause)), ratio(float64(m.sent), float64(p.sent)))
		}
	}
}

// median takes each figure's median on its own.
func (r *row) median() sample {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(r.samples))
		for i, s := range r.samples {
			v[i] = f(s)
		}
		return median(v)
	}
	return sample{
		total: time.Duration(pick(func(s sample) float64 { return float64(s.total) })),
		pause: time.Duration(pick(func(s sample) float64 { return float64(s.pause) })),
		sent:  int64(pick(func(s sample) float64 { return float64(s.sent) })),
	}
}

// median is the middle value, or the mean of the two middle values for an even count.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = append([]float64(nil), v...)
	sort.Float64s(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

// mode is the row's migration mode, or the modes its moves took.
func (r *row) mode() string {
	var modes []string
	for _, s := range r.samples {
		if !strings.Contains(strings.Join(modes, "/")+"/", s.mode+"/") {
			modes = append(modes, s.mode)
		}
	}
	return strings.Join(modes, "/")
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fx", a/b)
}

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
func mib(b int64) string          { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func pauseName(kind string) string {
	if kind == "vm" {
		return "downtime"
	}
	return "freeze"
}

// notes says what the table cannot: a shared case whose moves still copied the root, which tandem
// case the plain QEMU migration compares with, and QEMU's own total-time of the plain migrations.
func notes(rows []*row) []string {
	var out []string
	vmShared := false
	for _, r := range rows {
		switch {
		case r.storage == "shared" && len(r.samples) > 0 && r.mode() != "live-shared":
			out = append(out, fmt.Sprintf("%s: the root was on the shared pool, but the moves ran as %s: "+
				"this build's moves copy such a root", r.name(), r.mode()))
		case r.name() == "vm shared" && len(r.samples) > 0:
			vmShared = true
		case r.name() == "vm" && len(r.samples) > 0:
			var qemu []float64
			for _, s := range r.samples {
				qemu = append(qemu, float64(s.qemu))
			}
			out = append(out, fmt.Sprintf("vm plain: total runs from starting the destination QEMU until the guest "+
				"runs there; QEMU's own total-time (migrate until completed) has a median of %s", secs(time.Duration(median(qemu)))))
			if vmShared {
				out = append(out, "vm: plain QEMU shares its disk (one host): compare it with vm shared; "+
					"vm local also mirrors the disk over NBD")
			} else {
				out = append(out, "vm: no vm case on shared storage that moved without copying its disk, so plain QEMU "+
					"(one host, the disk shared as it is) is compared with vm local, which mirrors the disk over NBD")
			}
		}
	}
	return out
}

// versions names the bare components measured.
func versions(rc *plainRunc, qm *plainQEMU) string {
	var v []string
	if rc != nil {
		v = append(v, rc.version)
	}
	if qm != nil {
		v = append(v, qm.version)
	}
	return strings.Join(v, ", ")
}

// machine describes this host: kernel, CPUs and load (other work on it moves the figures).
func machine() string {
	rel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	load, _ := os.ReadFile("/proc/loadavg")
	f := append(strings.Fields(string(load)), "?", "?", "?")
	return fmt.Sprintf("linux %s, %d CPUs, load %s", strings.TrimSpace(string(rel)), runtime.NumCPU(), strings.Join(f[:3], " "))
}
