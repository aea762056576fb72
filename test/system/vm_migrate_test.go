package system

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/driver/vm"
	"tandem/internal/driver/vm/vmtest"
	"tandem/internal/testenv"
)

// Live migration of VMs between two "hosts" on this machine: two vm drivers with their own state and
// run dirs, a directory both see as the shared pool, the migration stream and NBD over loopback.

// vmMigCounter prints a counter on the console every 100 ms and appends it to a file on the root
// disk, synced now and then, so both RAM and disk change while the VM migrates.
const vmMigCounter = `i=0; while :; do echo tick $i > /dev/console; echo $i >> /root/ticks; ` +
	`[ $((i % 5)) = 0 ] && sync; i=$((i+1)); usleep 100000; done </dev/null >/dev/null 2>&1 &`

type vmMigHosts struct {
	t            *testing.T
	dirsA, dirsB vmtest.Dirs
	a, b         *vm.Driver
	images       *vmtest.Images
	shared       string // the shared pool: a directory both hosts see
}

func newVMMigHosts(t *testing.T) *vmMigHosts {
	testenv.Require(t, vmtest.Components...)
	images := vmtest.BusyboxImages(t)
	e := &vmMigHosts{t: t, dirsA: vmtest.NewDirs(t), dirsB: vmtest.NewDirs(t), images: images, shared: t.TempDir()}
	e.a = vmtest.NewDriver(t, e.dirsA, images)
	e.b = vmtest.NewDriver(t, e.dirsB, images)
	return e
}

// launch boots a 256 MiB VM on host A with its disk on the shared pool; it fails saying "hung" if the
// guest agent does not answer in time.
func (e *vmMigHosts) launch(name string) *driver.Handle {
	t := e.t
	h := e.create(&driver.Spec{ID: uuid.NewString(), Name: name, Type: "vm", Image: "busybox",
		Config: map[string]string{"limits.memory": "256MiB", vm.KeyDiskDir: e.shared}})
	if err := e.a.Start(testenv.Context(t, time.Minute), h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := e.a.WaitAgent(testenv.Context(t, vmBootDeadline), h); err != nil {
		t.Fatalf("guest hung: no agent %v after start: %v", vmBootDeadline, err)
	}
	return h
}

// create makes the instance on host A; it is deleted on both hosts when the test ends.
func (e *vmMigHosts) create(spec *driver.Spec) *driver.Handle {
	t := e.t
	h, err := e.a.Create(testenv.Context(t, 2*time.Minute), spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // the test's context has ended
		defer cancel()
		e.a.Delete(ctx, h)
		e.b.Delete(ctx, h)
	})
	return h
}

func vmMigExec(t *testing.T, d *vm.Driver, h *driver.Handle, script string) string {
	t.Helper()
	var out, errb bytes.Buffer
	code, err := d.Exec(testenv.Context(t, time.Minute), h, vm.ExecRequest{Cmd: []string{"sh", "-c", script}, Stdout: &out, Stderr: &errb})
	if err != nil || code != 0 {
		t.Fatalf("exec %q: exit %d, %v: %s", script, code, err, errb.String())
	}
	return out.String()
}

func vmMigPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// vmMigShip is what the integrator does with the handle between hosts: JSON over the wire.
func vmMigShip(t *testing.T, h *driver.Handle) *driver.Handle {
	raw, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var out driver.Handle
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// vmMigRun is one migration's outcome.
type vmMigRun struct {
	dst      *driver.Handle
	res      vm.MigrationResult
	wall     time.Duration // PrepareOutgoing to FinishIncoming
	srcLog   string        // the source's console log at the switch-over
	progress []vm.MigrationProgress
}

// incoming prepares dst for h (after src.PrepareOutgoing) and returns the source's options.
func (e *vmMigHosts) incoming(src, dst *vm.Driver, h *driver.Handle, shared bool, multifd int) (*driver.Handle, vm.MigrateOpts) {
	t := e.t
	t.Helper()
	if err := src.PrepareOutgoing(testenv.Context(t, 30*time.Second), h); err != nil {
		t.Fatalf("PrepareOutgoing: %v", err)
	}
	hd := vmMigShip(t, h)
	in := vm.IncomingOpts{Listen: "tcp:127.0.0.1:" + vmMigPort(t), SharedDisk: shared, MultifdChannels: multifd}
	if !shared {
		in.NBDListen = "tcp:127.0.0.1:" + vmMigPort(t)
	}
	if err := dst.CanRun(testenv.Context(t, 30*time.Second), hd, in); err != nil {
		t.Fatalf("CanRun: %v", err)
	}
	info, err := dst.PrepareIncoming(testenv.Context(t, time.Minute), hd, in)
	if err != nil {
		t.Fatalf("PrepareIncoming: %v", err)
	}
	return hd, vm.MigrateOpts{URI: info.URI, NBD: info.NBD, MultifdChannels: multifd}
}

// migrate moves h from src to dst the way `tandem move --live` will, up to the destination's resume.
func (e *vmMigHosts) migrate(src, dst *vm.Driver, h *driver.Handle, shared bool, multifd int) vmMigRun {
	t := e.t
	t.Helper()
	start := time.Now()
	hd, opts := e.incoming(src, dst, h, shared, multifd)
	r := vmMigRun{dst: hd}
	opts.Progress = func(p vm.MigrationProgress) { r.progress = append(r.progress, p) }
	res, err := src.MigrateOut(testenv.Context(t, 3*time.Minute), h, opts)
	if err != nil {
		t.Fatalf("MigrateOut: %v", err)
	}
	r.res = res
	r.srcLog = vmMigRead(t, src.ConsoleLogPath(h))
	if err := dst.FinishIncoming(testenv.Context(t, time.Minute), hd); err != nil {
		t.Fatalf("FinishIncoming: %v", err)
	}
	r.wall = time.Since(start)
	if err := src.Release(testenv.Context(t, time.Minute), h); err != nil {
		t.Fatalf("Release: %v", err)
	}
	return r
}

func vmMigRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

var vmMigTickRE = regexp.MustCompile(`tick (\d+)`)

// vmMigTicks checks that the counter printed across logs (one host's after the other's) never skips
// or repeats a number, and returns the last one.
func vmMigTicks(t *testing.T, logs ...string) int {
	t.Helper()
	// A line may be cut in two at the switch-over: the halves join when the logs are joined.
	all := vmMigTickRE.FindAllStringSubmatch(strings.Join(logs, ""), -1)
	if len(all) == 0 {
		t.Fatal("no ticks on the consoles")
	}
	prev := -1
	for _, m := range all {
		n, _ := strconv.Atoi(m[1])
		if prev >= 0 && n != prev+1 {
			t.Fatalf("the counter jumped from %d to %d", prev, n)
		}
		prev = n
	}
	return prev
}

// vmMigWaitTicks waits until the console log at path shows the counter past n.
func vmMigWaitTicks(t *testing.T, path string, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if all := vmMigTickRE.FindAllStringSubmatch(vmMigRead(t, path), -1); len(all) > 0 {
			if last, _ := strconv.Atoi(all[len(all)-1][1]); last > n {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the counter hung: not past %d after 60s in %s", n, path)
}

// vmMigHoldsNothing checks that a host's driver dirs have nothing of the instance and no QEMU runs
// from them.
func vmMigHoldsNothing(t *testing.T, dirs vmtest.Dirs, id string) {
	t.Helper()
	for _, p := range []string{filepath.Join(dirs.Dir, "instances", id), filepath.Join(dirs.RunDir, id)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is left behind", p)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		if b, _ := os.ReadFile(f); bytes.Contains(b, []byte(filepath.Join(dirs.RunDir, id))) {
			t.Errorf("a process still runs from %s: %s", dirs.RunDir, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

func (e *vmMigHosts) qemuPID(dirs vmtest.Dirs, id string) int {
	b, _ := os.ReadFile(filepath.Join(dirs.RunDir, id, "qemu.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		e.t.Fatalf("no qemu pid in %s", dirs.RunDir)
	}
	return pid
}

// The guest moves with its console counter running: no number lost or repeated across the hosts,
// the disk the destination runs from has what was written before and during the move, and the source
// host keeps nothing but the shared disk.
func TestVMMigrateSharedDisk(t *testing.T) { testVMMigrateCounter(t, true) }

func TestVMMigrateLocalDisk(t *testing.T) { testVMMigrateCounter(t, false) }

func testVMMigrateCounter(t *testing.T, shared bool) {
	e := newVMMigHosts(t)
	h := e.launch("mig1")
	sum := vmMigExec(t, e.a, h, "dd if=/dev/urandom of=/root/blob bs=1M count=8 2>/dev/null && sync && md5sum < /root/blob")
	vmMigExec(t, e.a, h, vmMigCounter)
	vmMigWaitTicks(t, e.a.ConsoleLogPath(h), 10)

	r := e.migrate(e.a, e.b, h, shared, 0)
	hd := r.dst
	t.Logf("migrated (%s): downtime %v, QEMU total %v, mirror %v, setup %v, RAM %d KiB, disk %d MiB; PrepareOutgoing to FinishIncoming %v",
		r.res.Mode, r.res.Downtime, r.res.TotalTime, r.res.MirrorTime, r.res.SetupTime, r.res.RAMBytes>>10, r.res.DiskBytes>>20, r.wall)
	if len(r.progress) == 0 || r.progress[len(r.progress)-1].Phase != vm.PhaseCompleted {
		t.Errorf("progress reports: %+v", r.progress)
	}
	if r.res.Downtime <= 0 || r.res.TotalTime <= 0 {
		t.Errorf("QEMU measured no downtime or total time: %+v", r.res)
	}
	if st, err := e.b.State(testenv.Context(t, 10*time.Second), hd); err != nil || st != driver.StatusRunning {
		t.Fatalf("destination state %s, %v", st, err)
	}
	last := vmMigTicks(t, r.srcLog)
	vmMigWaitTicks(t, e.b.ConsoleLogPath(hd), last+20)
	end := vmMigTicks(t, r.srcLog, vmMigRead(t, e.b.ConsoleLogPath(hd)))
	t.Logf("counter: %d on the source, continued to %d on the destination with no gap", last, end)

	if err := e.b.WaitAgent(testenv.Context(t, 30*time.Second), hd); err != nil {
		t.Fatalf("guest agent on the destination: %v", err)
	}
	// Read back from the disk, not the page cache that came with RAM.
	out := vmMigExec(t, e.b, hd, "sync; echo 3 > /proc/sys/vm/drop_caches; md5sum < /root/blob; cat /root/ticks")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != strings.TrimSpace(sum) {
		t.Errorf("the blob on the destination's disk: %s, written as %s", lines[0], sum)
	}
	for i, l := range lines[1:] {
		if l != strconv.Itoa(i) {
			t.Fatalf("/root/ticks line %d is %q: the disk lost or mangled writes", i, l)
		}
	}
	if n := len(lines) - 1; n <= last {
		t.Errorf("/root/ticks has %d lines, the counter was at %d at the switch-over", n, last)
	}
	vmMigHoldsNothing(t, e.dirsA, h.ID)
	diskPath := filepath.Join(e.shared, h.ID+".qcow2")
	if _, err := os.Stat(diskPath); (err == nil) != shared {
		t.Errorf("the source's disk on the shared pool after Release: %v (shared %v)", err, shared)
	}
}

// Failures at every stage leave the guest running on the source and nothing on the destination:
// the destination QEMU killed, or the move cancelled, while the disk mirrors and while RAM copies,
// and a completed migration that the destination never resumes. Then a move succeeds.
func TestVMMigrateFailures(t *testing.T) {
	e := newVMMigHosts(t)
	h := e.launch("mig2")
	vmMigExec(t, e.a, h, vmMigCounter)
	vmMigWaitTicks(t, e.a.ConsoleLogPath(h), 5)

	for _, c := range []struct {
		name   string
		shared bool
		phase  string
		cancel bool // cancel MigrateOut's ctx instead of killing the destination
	}{{"kill/mirror/disk", false, vm.PhaseDisk, false}, {"kill/mirror/ram", false, vm.PhaseRAM, false},
		{"kill/shared/ram", true, vm.PhaseRAM, false}, {"cancel/mirror/disk", false, vm.PhaseDisk, true},
		{"cancel/mirror/ram", false, vm.PhaseRAM, true}} {
		hd, opts := e.incoming(e.a, e.b, h, c.shared, 0)
		// Slow enough to strike mid-way.
		opts.MaxBandwidth = 4 << 20
		if c.phase == vm.PhaseDisk {
			opts.MirrorBandwidth = 32 << 20
		}
		pid := e.qemuPID(e.dirsB, h.ID)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		struck := false
		var midState driver.Status
		var midErr error
		opts.Progress = func(p vm.MigrationProgress) {
			if !struck && p.Phase == c.phase && (p.DiskDone > 0 || p.TransferredBytes > 0) {
				struck = true
				// The migration holds the monitor: State borrows it instead of queueing behind it.
				midState, midErr = e.a.State(testenv.Context(t, 5*time.Second), h)
				if c.cancel {
					cancel()
				} else {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		start := time.Now()
		res, err := e.a.MigrateOut(ctx, h, opts)
		cancel()
		if err == nil || !struck {
			t.Fatalf("%s: MigrateOut = %+v, %v; struck mid-way: %v", c.name, res, err, struck)
		}
		t.Logf("%s: MigrateOut failed after %v: %v", c.name, time.Since(start), err)
		if midErr != nil || midState != driver.StatusRunning {
			t.Errorf("%s: State during the migration: %s, %v", c.name, midState, midErr)
		}
		b := e.b
		if c.cancel {
			// As after a restart of the destination's daemon: a new driver finds the leftover.
			b = vmtest.NewDriver(t, e.dirsB, e.images)
			if pending, err := b.IncomingPending(testenv.Context(t, 30*time.Second), hd); err != nil || !pending {
				t.Fatalf("%s: IncomingPending = %v, %v", c.name, pending, err)
			}
		}
		if err := b.AbortIncoming(testenv.Context(t, time.Minute), hd); err != nil {
			t.Fatalf("%s: AbortIncoming: %v", c.name, err)
		}
		vmMigHoldsNothing(t, e.dirsB, h.ID)
		if st, err := e.a.State(testenv.Context(t, 10*time.Second), h); err != nil || st != driver.StatusRunning {
			t.Fatalf("%s: source state %s, %v", c.name, st, err)
		}
		vmMigExec(t, e.a, h, "sync")
		now := vmMigTicks(t, vmMigRead(t, e.a.ConsoleLogPath(h)))
		vmMigWaitTicks(t, e.a.ConsoleLogPath(h), now+3)
	}

	// Completed, but the destination dies before it resumes the guest: the source takes it back.
	hd, opts := e.incoming(e.a, e.b, h, true, 0)
	if _, err := e.a.MigrateOut(testenv.Context(t, 3*time.Minute), h, opts); err != nil {
		t.Fatalf("MigrateOut: %v", err)
	}
	if st, _ := e.a.State(testenv.Context(t, 10*time.Second), h); st != driver.StatusStopped {
		t.Errorf("source after a completed migration: %s, want Stopped (postmigrate)", st)
	}
	if err := e.a.Resume(testenv.Context(t, 10*time.Second), h); err == nil {
		t.Fatal("Resume of the postmigrate source succeeded: only AbortOutgoing may take the guest back")
	}
	syscall.Kill(e.qemuPID(e.dirsB, h.ID), syscall.SIGKILL)
	if err := e.b.FinishIncoming(testenv.Context(t, 30*time.Second), hd); err == nil {
		t.Fatal("FinishIncoming succeeded with the destination QEMU killed")
	} else {
		t.Logf("FinishIncoming with a dead destination: %v", err)
	}
	if err := e.b.AbortIncoming(testenv.Context(t, time.Minute), hd); err != nil {
		t.Fatalf("AbortIncoming: %v", err)
	}
	vmMigHoldsNothing(t, e.dirsB, h.ID)
	if err := e.a.AbortOutgoing(testenv.Context(t, time.Minute), h); err != nil {
		t.Fatalf("AbortOutgoing: %v", err)
	}
	if st, err := e.a.State(testenv.Context(t, 10*time.Second), h); err != nil || st != driver.StatusRunning {
		t.Fatalf("source after AbortOutgoing: %s, %v", st, err)
	}
	now := vmMigTicks(t, vmMigRead(t, e.a.ConsoleLogPath(h)))
	vmMigWaitTicks(t, e.a.ConsoleLogPath(h), now+5)
	if err := e.a.Release(testenv.Context(t, 10*time.Second), h); err == nil {
		t.Fatal("Release of a source that runs the guest succeeded")
	}

	// After all that, a move goes through, and the counter never skipped on the way.
	r := e.migrate(e.a, e.b, h, true, 0)
	last := vmMigTicks(t, r.srcLog)
	vmMigWaitTicks(t, e.b.ConsoleLogPath(r.dst), last+5)
	vmMigTicks(t, r.srcLog, vmMigRead(t, e.b.ConsoleLogPath(r.dst)))
	vmMigHoldsNothing(t, e.dirsA, h.ID)
}

// Total time and downtime of an idle 256 MiB VM, both disk modes, with and without multifd, there
// and back (the way back also proves a migrated instance migrates again).
func TestVMMigrateIdleTimes(t *testing.T) {
	e := newVMMigHosts(t)
	h := e.launch("idle1")
	time.Sleep(2 * time.Second) // let the boot settle: idle means idle
	var table []string
	hosts := [2]*vm.Driver{e.a, e.b}
	for i, c := range []struct {
		shared  bool
		multifd int
	}{{true, 0}, {true, 0}, {true, 2}, {true, 2}, {false, 0}, {false, 0}, {false, 2}, {false, 2}} {
		// Shared first: a mirrored move leaves the disk in the destination's instance dir.
		src, dst := hosts[i%2], hosts[(i+1)%2]
		r := e.migrate(src, dst, h, c.shared, c.multifd)
		h = r.dst
		table = append(table, fmt.Sprintf("%-6s multifd=%d  %s  downtime %4dms  qemu total %4dms  mirror %4dms  RAM %6d KiB  wall %v",
			r.res.Mode, c.multifd, map[bool]string{true: "A->B", false: "B->A"}[i%2 == 0], r.res.Downtime.Milliseconds(),
			r.res.TotalTime.Milliseconds(), r.res.MirrorTime.Milliseconds(), r.res.RAMBytes>>10, r.wall.Round(time.Millisecond)))
	}
	if err := hosts[0].WaitAgent(testenv.Context(t, 30*time.Second), h); err != nil {
		t.Fatalf("guest agent after eight moves: %v", err)
	}
	t.Logf("idle 256 MiB VM, TCG, loopback:\n%s", strings.Join(table, "\n"))
}
