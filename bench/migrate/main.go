// Command migrate benchmarks tandem's live moves between two hosts against the bare component a
// user would otherwise drive by hand, in the same run: an idle busybox container moved with
// `tandem move --live` (CRIU) against plain `runc checkpoint` + `runc restore` on one host, and an
// idle busybox VM moved the same way (QEMU live migration) against two plain qemu-system-x86_64
// processes migrating over loopback. The two hosts are network namespaces on this machine, each
// with its own tandemd, as in test/system's move tests. Run as root from the repository:
//
//	go run ./bench/migrate [-n 3] [-settle 3s] [-kinds container,vm] [-timeout 40m]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"tandem/bench/internal/benchkit"
)

// sample is one move.
type sample struct {
	total time.Duration // the whole move
	pause time.Duration // a container's freeze, a VM's downtime (QEMU's figure)
	sent  int64         // bytes the move sent (see bench/README.md for what each runner counts)
	mode  string        // tandem's migration mode (live-copy, live-mirror, live-shared), or the baseline's
	qemu  time.Duration // plain QEMU's own total-time: from `migrate` until completed
}

// row is one line of the table: a runner on one case.
type row struct {
	kind    string // container or vm
	storage string // local or shared for tandem; "" for the baseline
	runner  string // tandem or plain
	samples []sample
	skipped string // why the case did not run
}

func (r *row) name() string { return strings.TrimSpace(r.kind + " " + r.storage) }

type options struct {
	n      int
	settle time.Duration
	kinds  map[string]bool
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 3, "moves per case, back and forth between the two hosts")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "idle time after a launch or move before the next move")
	kinds := flag.String("kinds", "container,vm", "which kinds to move: container, vm or both")
	timeout := flag.Duration("timeout", 40*time.Minute, "bound on the whole run; cleanup gets its own 3 minutes")
	flag.Parse()
	o.kinds = map[string]bool{}
	for _, k := range strings.Split(*kinds, ",") {
		if k != "container" && k != "vm" {
			fmt.Fprintf(os.Stderr, "bench/migrate: -kinds: unknown kind %q\n", k)
			os.Exit(2)
		}
		o.kinds[k] = true
	}
	if o.n < 1 {
		fmt.Fprintln(os.Stderr, "bench/migrate: -n must be at least 1")
		os.Exit(2)
	}
	benchkit.Main("bench/migrate", *timeout, func() string { return skipReason(o) },
		func(ctx context.Context) error { return run(ctx, o) })
}

// skipReason says why this host cannot run the benchmark, or "".
func skipReason(o options) string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, runc, CRIU, QEMU)"
	}
	tools := []string{"go", "ip", "nsenter", "rsync", "dnsmasq", "runc", "criu"}
	if o.kinds["vm"] {
		tools = append(tools, "qemu-system-x86_64", "qemu-img")
	}
	for _, bin := range tools {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed (scripts/setup.sh installs it)"
		}
	}
	if _, err := os.Stat(guestKernel); o.kinds["vm"] && err != nil {
		return "no guest kernel at " + guestKernel + " (scripts/setup.sh installs it)"
	}
	return ""
}

func run(ctx context.Context, o options) (err error) {
	work, done, err := benchkit.WorkDir("bench/migrate", "tbm")
	if err != nil {
		return err
	}
	var l *lab
	var rc *plainRunc
	var qm *plainQEMU
	defer func() {
		// Cleanup is bounded on its own: it must run after a timeout or Ctrl-C too.
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		ok := rc.close(cctx)
		ok = qm.close() && ok
		done(l.close(cctx) && ok)
	}()

	fmt.Println("building tandem, tandemd and tandem-agent ...")
	bin := filepath.Join(work, "bin")
	if err := benchkit.Build(ctx, bin, nil, "./cmd/tandem", "./cmd/tandemd"); err != nil {
		return err
	}
	// The guest agent is static: it runs inside VMs, which have no libc of the host's. tandemd
	// finds it next to itself.
	if err := benchkit.Build(ctx, bin, []string{"CGO_ENABLED=0"}, "-trimpath", "-ldflags=-s -w", "./cmd/tandem-agent"); err != nil {
		return err
	}
	fmt.Println("starting two hosts (network namespaces, a tandemd each, mutual trust) ...")
	if l, err = newLab(ctx, work, bin); err != nil {
		return err
	}
	fmt.Println("building the busybox image on host-a and importing it on host-b ...")
	rootfs, err := l.busybox(ctx)
	if err != nil {
		return err
	}
	pool, err := l.sharedPool(ctx)
	if err != nil {
		return err
	}

	var rows []*row
	if o.kinds["container"] {
		if rc, err = newRunc(ctx, work, rootfs, o.settle); err != nil {
			return err
		}
		base := func() (mover, error) { return rc, nil }
		cts, err := l.runKind(ctx, o, "container", pool, base)
		if err != nil {
			return err
		}
		rows = append(rows, cts...)
	}
	if o.kinds["vm"] {
		// The plain QEMU boots what tandem's first VM boots: its kernel, initramfs and base disk.
		base := func() (mover, error) {
			if qm != nil {
				return qm, nil
			}
			q, err := newPlainQEMU(ctx, work, l.hosts[0].dir, o.settle)
			qm = q // also a half-started one, for cleanup
			return q, err
		}
		vms, err := l.runKind(ctx, o, "vm", pool, base)
		if err != nil {
			return err
		}
		rows = append(rows, vms...)
	}
	fmt.Println()
	fmt.Printf("median of %d moves per case, back and forth; %s; %s\n\n", o.n, machine(), versions(rc, qm))
	printTable(rows)
	for _, n := range notes(rows) {
		fmt.Println(n)
	}
	return nil
}
