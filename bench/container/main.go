// Command container benchmarks tandem's system containers against plain runc on the same busybox
// rootfs, in the same run: launch-to-init latency (the launch API call until init runs as PID 1),
// launch-to-ready latency (until the first `exec -- true` succeeds) and the host memory each
// container costs while N of each kind run at once. It builds tandem, starts a private tandemd on a
// temporary state dir, and removes everything it made at the end, also on Ctrl-C. Run as root from
// the repository:
//
//	go run ./bench/container [-n 10] [-settle 3s] [-timeout 10m]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"tandem/bench/internal/benchkit"
)

// sample is what one container measured.
type sample struct {
	launch time.Duration // launch request (tandem) or `runc run -d` start, until init runs
	ready  time.Duration // the same start, until `exec -- true` first succeeds
	procs  int64         // RSS of the host processes kept for the container (shim, runc leftovers)
	pss    int64         // the same as PSS: pages shared between shims counted once
	cgroup int64         // the container's cgroup memory usage
}

func main() {
	n := flag.Int("n", 10, "containers of each kind, launched one after another, then all running at once")
	settle := flag.Duration("settle", 3*time.Second, "how long all containers run before memory is read")
	timeout := flag.Duration("timeout", 10*time.Minute, "bound on the whole run; cleanup gets its own 2 minutes")
	stopped := flag.Int("stopped", 50, "stopped tandem containers added for the list timing")
	flag.Parse()
	if *n < 1 {
		fmt.Fprintln(os.Stderr, "bench/container: -n must be at least 1")
		os.Exit(2)
	}
	benchkit.Main("bench/container", *timeout, skipReason, func(ctx context.Context) error { return run(ctx, *n, *settle, *stopped) })
}

// skipReason says why this host cannot run the benchmark, or "".
func skipReason() string {
	if os.Geteuid() != 0 {
		return "needs root (runc and tandemd's container driver)"
	}
	for _, bin := range []string{"runc", "busybox", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed"
		}
	}
	return ""
}

func run(ctx context.Context, n int, settle time.Duration, stopped int) (err error) {
	work, done, err := benchkit.WorkDir("bench/container", "tbc")
	if err != nil {
		return err
	}
	var t *tandem
	var r *plainRunc
	defer func() {
		// Cleanup is bounded on its own: it must run after a timeout or Ctrl-C too.
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		ok := r.close(cctx)
		done(t.close(cctx) && ok)
	}()

	bin := filepath.Join(work, "bin")
	fmt.Println("building tandem and tandemd ...")
	if err := benchkit.Build(ctx, bin, nil, "./cmd/tandem", "./cmd/tandemd"); err != nil {
		return err
	}
	if t, err = startTandem(ctx, bin, filepath.Join(work, "d")); err != nil {
		return err
	}
	fmt.Println("building the busybox image through tandem ...")
	rootfs, err := t.busyboxRootfs(ctx, work)
	if err != nil {
		return err
	}
	if r, err = newRunc(ctx, work, rootfs); err != nil {
		return err
	}

	daemonBefore := t.daemonRSS()
	fmt.Printf("launching %d tandem containers and %d plain runc ones, alternately ...\n", n, n)
	ts, rs := make([]sample, n), make([]sample, n)
	for i := 0; i < n; i++ {
		// Alternate who goes first, so that neither always launches on a host one container busier.
		steps := []func() error{
			func() (err error) { ts[i], err = t.launch(ctx, fmt.Sprintf("b%d", i)); return err },
			func() (err error) { rs[i], err = r.launch(ctx, fmt.Sprintf("r%d", i)); return err },
		}
		if i%2 == 1 {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		fmt.Printf("  %2d  tandem %6.3fs / %6.3fs   runc %6.3fs / %6.3fs   (launch / ready)\n", i+1,
			ts[i].launch.Seconds(), ts[i].ready.Seconds(), rs[i].launch.Seconds(), rs[i].ready.Seconds())
	}
	fmt.Printf("all %d running; reading memory in %v ...\n", 2*n, settle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
	}
	procs := scanProcs()
	if err := t.memory(procs, ts); err != nil {
		return err
	}
	if err := r.memory(procs, rs); err != nil {
		return err
	}
	fmt.Println()
	fmt.Printf("%d containers each, busybox image, %s, %d CPUs, cgroup %s; %s; tandem with --network=false\n\n",
		n, kernel(), runtime.NumCPU(), cgroupVersion(), r.version)
	printTable(ts, rs)
	after := t.daemonRSS()
	fmt.Printf("\nnot counted above: tandemd RSS %s before the launches, %s with %d containers (%+.2f MiB per container);\n",
		mib(daemonBefore), mib(after), n, float64(after-daemonBefore)/float64(n)/(1<<20))
	fmt.Printf("lxcfs (one per host, shared by all tandem daemons) RSS %s;\n", mib(lxcfsRSS(procs)))
	fmt.Printf("runc processes left alive: %d next to tandem's shims, %d for plain runc's containers\n", t.leftovers, r.leftovers)
	return benchList(ctx, t, r, n, stopped)
}

// printTable prints median and p90 of each figure for both, and their ratio.
func printTable(ts, rs []sample) {
	secs := func(s []sample, f func(sample) time.Duration) []float64 {
		v := make([]float64, len(s))
		for i := range s {
			v[i] = f(s[i]).Seconds()
		}
		return v
	}
	bytes := func(s []sample, f func(sample) int64) []float64 {
		v := make([]float64, len(s))
		for i := range s {
			v[i] = float64(f(s[i]))
		}
		return v
	}
	launch := func(x sample) time.Duration { return x.launch }
	ready := func(x sample) time.Duration { return x.ready }
	host := func(x sample) int64 { return x.procs + x.cgroup }
	hostPSS := func(x sample) int64 { return x.pss + x.cgroup }
	procs := func(x sample) int64 { return x.procs }
	pss := func(x sample) int64 { return x.pss }
	cg := func(x sample) int64 { return x.cgroup }

	fmt.Printf("%-40s %10s %10s %7s\n", "metric", "tandem", "runc", "ratio")
	line := func(name string, t, r []float64, format func(float64) string) {
		for _, q := range []struct {
			name string
			q    float64
		}{{"median", 0.5}, {"p90", 0.9}} {
			a, b := quantile(t, q.q), quantile(r, q.q)
			ratio := "-"
			if b > 0 {
				ratio = fmt.Sprintf("%.1fx", a/b)
			}
			fmt.Printf("%-40s %10s %10s %7s\n", name+" "+q.name, format(a), format(b), ratio)
		}
	}
	line("launch (API->running)", secs(ts, launch), secs(rs, launch), fmtSecs)
	line("ready (first exec)", secs(ts, ready), secs(rs, ready), fmtSecs)
	line("host memory per container", bytes(ts, host), bytes(rs, host), fmtMiB)
	line("  same, processes counted as PSS", bytes(ts, hostPSS), bytes(rs, hostPSS), fmtMiB)
	line("  host processes (shim) RSS", bytes(ts, procs), bytes(rs, procs), fmtMiB)
	line("  host processes (shim) PSS", bytes(ts, pss), bytes(rs, pss), fmtMiB)
	line("  container cgroup memory", bytes(ts, cg), bytes(rs, cg), fmtMiB)
}

func fmtSecs(s float64) string { return fmt.Sprintf("%.3f s", s) }
func fmtMiB(b float64) string  { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
func mib(b int64) string       { return fmtMiB(float64(b)) }

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "linux"
	}
	return "linux " + strings.TrimSpace(string(b))
}
