package container

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/containertest"
	"tandem/internal/errdefs"
	"tandem/internal/testenv"
)

// fakeCRIU builds test/fakecriu, configured to hang in the first hangs dumps (-1: all; swrkOnly:
// only those runc asks for, not the probe's), and returns it with its call log.
func fakeCRIU(t *testing.T, hangs int, swrkOnly bool, after ...bool) (bin, log string) {
	t.Helper()
	testenv.Require(t, "criu")
	if hangs != -1 {
		testenv.Require(t, "checkpoint") // what passes the hangs must work
	}
	real := findCRIU("")
	bin, log = containertest.BuildFakeCRIU(t, containertest.FakeCRIU{Real: real, Hangs: hangs, SwrkOnly: swrkOnly, After: len(after) > 0 && after[0]})
	probeCacheDir = t.TempDir() // the fake's answer is not the host's
	t.Cleanup(func() { probeCacheDir = "/run/tandem" })
	return bin, log
}

// startCounter starts a counter in h that a restore must continue.
func startCounter(t *testing.T, e *env, h *driver.Handle) {
	// Written aside and renamed: a checkpoint between the truncate and the write would read "".
	e.run(t, h, "i=0; (while true; do i=$((i+1)); echo $i > /root/count.new; mv /root/count.new /root/count; sleep 0.1; done) >/dev/null 2>&1 </dev/null &")
	time.Sleep(300 * time.Millisecond)
}

// restoreContinuesCounter starts h from its checkpoint and checks that startCounter's counter
// carries on from where the checkpoint left it.
func restoreContinuesCounter(t *testing.T, e *env, h *driver.Handle) {
	t.Helper()
	before, _ := readCount(e, h)
	if err := e.d.Start(testenv.Context(t, 5*time.Minute), h); err != nil {
		t.Fatalf("restore: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	out, _ := e.run(t, h, "cat /root/count")
	if after := strings.TrimSpace(out); atoi(after) <= atoi(before) || atoi(after) > atoi(before)+20 {
		t.Fatalf("counter before %q after %q: not continued", before, after)
	}
}

// assertRunsAsBefore checks what a killed dump must leave: the container running, counting, no
// task traced or frozen, and no criu left.
func assertRunsAsBefore(t *testing.T, e *env, h *driver.Handle, criu string) {
	t.Helper()
	ctx := testenv.Context(t, 30*time.Second)
	if st, err := e.d.State(ctx, h); err != nil || st != driver.StatusRunning {
		t.Fatalf("state after a killed dump: %s %v", st, err)
	}
	dirs := cgroupDirs(e.d.cgroupsPath(h.ID))
	if traced := tracedPids(cgroupPids(dirs)); len(traced) > 0 {
		t.Errorf("tasks still traced: %v", traced)
	}
	if frozenCgroups(dirs) {
		t.Error("the container's cgroup is still frozen")
	}
	if out, _ := exec.Command("pgrep", "-f", "^"+criu+" ").Output(); len(out) > 0 {
		t.Errorf("criu still runs: %s", out)
	}
	a, _ := e.run(t, h, "cat /root/count")
	time.Sleep(400 * time.Millisecond)
	b, _ := e.run(t, h, "cat /root/count")
	if atoi(strings.TrimSpace(b)) <= atoi(strings.TrimSpace(a)) {
		t.Errorf("counter stands still after the killed dump: %q then %q", a, b)
	}
	if has, _ := e.d.HasCheckpoint(ctx, h); has {
		t.Error("a checkpoint is pending after a failed stateful stop")
	}
}

// A dump that hangs is killed at its deadline and tried again without breakpoints; the second
// try's checkpoint restores with the counter going on.
func TestDumpHangRetried(t *testing.T) {
	bin, log := fakeCRIU(t, 1, true)
	e := newEnv(t, func(o *Options) { o.CRIU, o.CRIUTimeout = bin, 3*time.Second })
	h := e.launch(t, "hang1", nil)
	startCounter(t, e, h)
	ctx := testenv.Context(t, 2*time.Minute)
	start := time.Now()
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatalf("stateful stop with one hung dump: %v", err)
	}
	took := time.Since(start)
	calls, _ := os.ReadFile(log)
	t.Logf("stateful stop through one hang: %s; criu calls:\n%s", took.Round(time.Millisecond), calls)
	if took < 3*time.Second {
		t.Errorf("took %s: the first dump did not hang until its deadline", took)
	}
	if !strings.Contains(string(calls), "hang CRIU_FAULT=\n") || !strings.Contains(string(calls), "CRIU_FAULT=130") {
		t.Errorf("want a hang, then a retry with breakpoints off (CRIU_FAULT=130); calls:\n%s", calls)
	}
	restoreContinuesCounter(t, e, h)
}

// A criu that hangs after it wrote every image and ended the tasks: the stateful stop keeps the
// images, and the next start restores the container with its counter going on.
func TestDumpHangAfterImagesKeepsState(t *testing.T) {
	bin, _ := fakeCRIU(t, 1, true, true)
	e := newEnv(t, func(o *Options) { o.CRIU, o.CRIUTimeout = bin, 3*time.Second })
	h := e.launch(t, "hanga", nil)
	startCounter(t, e, h)
	ctx := testenv.Context(t, 5*time.Minute)
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatalf("stateful stop whose criu hung after the dump: %v", err)
	}
	if has, _ := e.d.HasCheckpoint(ctx, h); !has {
		t.Fatal("the images were not kept")
	}
	restoreContinuesCounter(t, e, h)
}

// Two hangs fail the stop with the stage named, and leave the container exactly as it was; the
// next stateful stop (criu no longer hangs) works.
func TestDumpHangTwiceLeavesItRunning(t *testing.T) {
	bin, _ := fakeCRIU(t, 2, true)
	e := newEnv(t, func(o *Options) { o.CRIU, o.CRIUTimeout = bin, 2*time.Second })
	h := e.launch(t, "hang2", nil)
	startCounter(t, e, h)
	ctx := testenv.Context(t, 2*time.Minute)
	err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true})
	if err == nil || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "criu dump did not finish in 2s, twice") ||
		!strings.Contains(err.Error(), "keeps running on this host") {
		t.Fatalf("stateful stop with two hung dumps: %v", err)
	}
	t.Logf("error: %v", err)
	assertRunsAsBefore(t, e, h, bin)
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatalf("stateful stop once criu works: %v", err)
	}
	if err := e.d.Start(ctx, h); err != nil {
		t.Fatalf("restore: %v", err)
	}
}

// Cancelling a hung dump (the operation's cancel) kills criu and leaves the container running.
func TestDumpHangCancelled(t *testing.T) {
	bin, _ := fakeCRIU(t, -1, true)
	e := newEnv(t, func(o *Options) { o.CRIU = bin })
	h := e.launch(t, "hangc", nil)
	startCounter(t, e, h)
	ctx := testenv.Context(t, 2*time.Second)
	start := time.Now()
	err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true})
	if err == nil || !strings.Contains(err.Error(), "cancelled") {
		t.Fatalf("cancelled stateful stop: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the cancel took %s to end the dump", took)
	}
	assertRunsAsBefore(t, e, h, bin)
}

// On a host where criu dump never returns the probe says so in time, and checkpoints are refused
// at once with its reason; the container runs on.
func TestCheckpointProbeRefuses(t *testing.T) {
	bin, _ := fakeCRIU(t, -1, false)
	defer func(old time.Duration) { checkpointProbeTimeout = old }(checkpointProbeTimeout)
	checkpointProbeTimeout = 3 * time.Second
	e := newEnv(t, func(o *Options) { o.CRIU = bin })
	h := e.launch(t, "probe", nil)
	ctx := testenv.Context(t, 30*time.Second)
	s := e.d.CheckpointSupport(ctx)
	if !s.Known || s.Available || !strings.HasPrefix(s.Reason, "criu dump did not finish in 3s on this kernel") {
		t.Fatalf("probe with a hanging criu: %+v", s)
	}
	if why := e.d.Info(ctx).Missing[driver.CapCheckpoint]; !strings.HasPrefix(why, "unavailable (criu dump did not finish") {
		t.Errorf("Info's missing checkpoint: %q", why)
	}
	t.Logf("checkpoint: %s", s)
	start := time.Now()
	err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true})
	if err == nil || !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), s.Reason) || time.Since(start) > 2*time.Second {
		t.Fatalf("stateful stop on a host that cannot checkpoint: %v after %s", err, time.Since(start))
	}
	if _, err := e.d.Dump(ctx, h, DumpOpts{Dir: t.TempDir(), TCPEstablished: true}); err == nil || !strings.Contains(err.Error(), s.Reason) {
		t.Fatalf("dump on a host that cannot checkpoint: %v", err)
	}
	if f := e.d.MigrationFeatures(ctx); f.CRIU || !strings.Contains(f.NoCRIU, s.Reason) {
		t.Errorf("migration features: %+v", f)
	}
	if st, _ := e.d.State(ctx, h); st != driver.StatusRunning {
		t.Fatalf("state after the refusals: %s", st)
	}
}

// The probe with the real criu answers in time; where it says no, the tests that checkpoint
// skip with its reason.
func TestCheckpointProbe(t *testing.T) {
	testenv.Require(t, realContainers...)
	testenv.Require(t, "criu")
	criu := findCRIU("")
	ctx := testenv.Context(t, 30*time.Second)
	start := time.Now()
	s := probeCheckpoint(ctx, criu, t.TempDir())
	t.Logf("probe: %s in %s", s, time.Since(start).Round(time.Millisecond))
	if !s.Known || time.Since(start) > checkpointProbeTimeout+5*time.Second {
		t.Fatalf("the probe did not answer in time: %+v", s)
	}
	if !s.Available {
		testenv.Unsupported(t, "this host cannot checkpoint: %s", s.Reason)
	}
}

// "checkpoint": this host's CRIU can really dump and restore (the driver's probe): a fact about
// the kernel, so a skip under CI too; a CRIU that is not installed fails under CI.
func init() {
	testenv.Define("checkpoint", testenv.Host, func(ctx context.Context) error {
		dir, err := os.MkdirTemp("", "tandem-probe-")
		if err != nil {
			return err
		}
		if s := HostCheckpointSupport(ctx, findCRIU(""), dir); !s.Available {
			return errors.New("this host cannot checkpoint: " + s.Reason)
		}
		return nil
	}, "root", "criu")
}
