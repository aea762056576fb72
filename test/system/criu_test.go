package system

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/driver/container/containertest"
	"tandem/internal/testenv"
)

// fakeCRIU builds test/fakecriu, a criu that hangs in dumps as the real one does on hosts where
// compel's breakpoint never traps: hangs dumps hang (-1: all), only runc's if swrkOnly (not the
// probe's). It returns the binary and its call log.
func fakeCRIU(t *testing.T, hangs int, swrkOnly bool) (bin, log string) {
	t.Helper()
	testenv.Require(t, "checkpoint") // the fake passes everything but its hangs to the real criu
	real, err := testenv.CRIU()
	if err != nil {
		t.Fatal(err)
	}
	return containertest.BuildFakeCRIU(t, containertest.FakeCRIU{Real: real, Hangs: hangs, SwrkOnly: swrkOnly})
}

// counterRuns checks that the container's console counter still advances on h.
func counterRuns(t *testing.T, h *daemonHarness, name string) {
	t.Helper()
	last := func() int {
		log, _, _ := h.tandem("console", name, "--show-log")
		n := numbers(ctCountRE, log)
		if len(n) == 0 {
			return 0
		}
		return n[len(n)-1]
	}
	a := last()
	time.Sleep(time.Second)
	if b := last(); b <= a {
		t.Fatalf("%s's counter stands still (%d, then %d)", name, a, b)
	}
}

// timed runs the CLI on h and returns its error output and how long it took; it must fail.
func mustFail(t *testing.T, h *daemonHarness, args ...string) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	out, errOut, err := h.tandem(args...)
	took := time.Since(start)
	if err == nil {
		t.Fatalf("tandem %s succeeded: %s", strings.Join(args, " "), out)
	}
	return strings.TrimSpace(errOut), took
}

// The host where every criu dump hangs (issue: "Checkpoint on hosts where criu dump never
// returns"): host-a runs a criu that never finishes a dump. It says so in host info; a stateful
// stop and a live move, out or in, are refused at once with the reason and the container runs
// on; a cold move still works.
func TestCheckpointUnavailableHost(t *testing.T) {
	bin, _ := fakeCRIU(t, -1, false)
	l := newLabWith(t, 2, func(i int) []string {
		if i == 0 {
			return []string{"--criu", bin}
		}
		return nil
	})
	a, b := l.hosts[0], l.hosts[1]
	var reason string
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		info := a.must("host", "info")
		if i := strings.Index(info, "checkpoint: unavailable ("); i >= 0 {
			reason = strings.TrimSpace(info[i:])
			reason, _, _ = strings.Cut(reason, "\n")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host info does not say checkpoint is unavailable within a minute:\n%s", info)
		}
	}
	t.Logf("host-a: %s", reason)
	if !strings.Contains(reason, "criu dump did not finish in 10s on this kernel") {
		t.Errorf("reason: %q", reason)
	}
	if info := b.must("host", "info"); !strings.Contains(info, "checkpoint: available") && !strings.Contains(info, "being probed") {
		t.Errorf("host-b (real criu) does not say checkpoint is available:\n%s", info)
	}
	why := strings.TrimSuffix(strings.TrimPrefix(reason, "checkpoint: unavailable ("), ")")

	a.must("image", "build", "busybox")
	launchContainer(t, a, "c1")
	msg, took := mustFail(t, a, "stop", "c1", "--stateful")
	t.Logf("stop --stateful: %s (%s)", msg, took.Round(time.Millisecond))
	if took > 2*time.Second || !strings.Contains(msg, why) {
		t.Errorf("stop --stateful on host-a: %q after %s; want the reason within 2s", msg, took)
	}
	assertStatus(t, a, "c1", api.StatusRunning)
	msg, took = mustFail(t, a, "move", "c1", "--target", "host-b", "--live")
	t.Logf("move out: %s (%s)", msg, took.Round(time.Millisecond))
	if took > 2*time.Second || !strings.Contains(msg, why) {
		t.Errorf("live move from host-a: %q after %s; want the reason within 2s", msg, took)
	}
	assertStatus(t, a, "c1", api.StatusRunning)
	if hasInstance(t, b, "c1") {
		t.Error("host-b holds c1 after a refused move")
	}
	counterRuns(t, a, "c1")

	// Cold moves need no CRIU.
	a.must("stop", "c1")
	a.must("move", "c1", "--target", "host-b")
	assertStatus(t, b, "c1", api.StatusStopped)
	b.must("delete", "c1")

	// Into host-a: B can dump, but A cannot restore; refused before anything stops.
	b.must("image", "build", "busybox")
	b.must("launch", "busybox", "c2", "-d", "eth0,type=nic,network=lab")
	b.must("exec", "c2", "--", "sh", "-c", ctWorkload)
	msg, took = mustFail(t, b, "move", "c2", "--target", "host-a", "--live")
	t.Logf("move in: %s (%s)", msg, took.Round(time.Millisecond))
	if took > 2*time.Second || !strings.Contains(msg, why) {
		t.Errorf("live move to host-a: %q after %s; want the reason within 2s", msg, took)
	}
	assertStatus(t, b, "c2", api.StatusRunning)
	counterRuns(t, b, "c2")
	b.must("delete", "--force", "c2")
}

// A live move whose dump hangs (issue: "no hung checkpoint"): criu is killed at the deadline and
// the dump retried; when that hangs too, the move fails naming the stage, and the container runs
// on at the source only, with nothing left of the move on either host; the next move works.
func TestMoveWithHungDump(t *testing.T) {
	bin, log := fakeCRIU(t, 2, true)
	l := newLabWith(t, 2, func(i int) []string {
		if i == 0 {
			return []string{"--criu", bin, "--criu-timeout", "3s"}
		}
		return nil
	})
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	echo, _ := launchContainer(t, a, "c1")
	start := time.Now()
	msg, took := mustFail(t, a, "move", "c1", "--target", "host-b", "--live")
	t.Logf("move with two hung dumps: %s (%s)", msg, took.Round(time.Millisecond))
	if !strings.Contains(msg, "criu dump did not finish in 3s, twice") || !strings.Contains(msg, "keeps running on this host") {
		t.Errorf("the move's error does not name the stage: %q", msg)
	}
	if took > time.Minute {
		t.Errorf("the failed move took %s", took)
	}
	calls, _ := os.ReadFile(log)
	if strings.Count(string(calls), "hang ") != 2 || !strings.Contains(string(calls), "hang CRIU_FAULT=130") {
		t.Errorf("want two hung dumps, the second without breakpoints; calls:\n%s", calls)
	}
	assertStatus(t, a, "c1", api.StatusRunning)
	waitGone(t, b, "c1", 30*time.Second)
	if out, _ := exec.Command("pgrep", "-f", "^"+bin+" ").Output(); len(out) > 0 {
		t.Errorf("criu still runs after the failed move: %s", out)
	}
	counterRuns(t, a, "c1")
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the failed move: %v", err)
	}
	var inst api.Instance
	json.Unmarshal([]byte(a.must("info", "c1", "--format", "json")), &inst)
	if inst.Operation != "" || inst.StatusError != "" || inst.DesiredPower != api.PowerRunning {
		t.Errorf("c1's record after the failed move: operation %q, error %q, desired %q", inst.Operation, inst.StatusError, inst.DesiredPower)
	}
	t.Logf("failed move and recovery in %s", time.Since(start).Round(time.Millisecond))

	// criu works again (the fake's hangs are spent): the move goes through, state intact.
	tap := tapConsole(t, a, "c1")
	time.Sleep(time.Second)
	t.Logf("%s", strings.TrimSpace(a.must("move", "c1", "--target", "host-b", "--live")))
	checkContinues(t, b, "c1", ctCountRE, numbers(ctCountRE, tap.String()))
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the move: %v", err)
	}
	if hasInstance(t, a, "c1") {
		t.Error("host-a still lists c1 after the move")
	}
	b.must("delete", "--force", "c1")
}

// soakCount is n, or $TANDEM_SOAK_<name> when set (the soak: 50 cycles, 20 moves).
func soakCount(name string, n int) int {
	if v, err := strconv.Atoi(os.Getenv("TANDEM_SOAK_" + name)); err == nil && v > 0 {
		return v
	}
	return n
}

// noCRIULeft checks that no criu runs and no task anywhere is traced by one.
func noCRIULeft(t *testing.T) {
	t.Helper()
	if out, _ := exec.Command("pgrep", "-x", "criu").Output(); len(out) > 0 {
		t.Errorf("criu processes left: %s", out)
	}
	statuses, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, st := range statuses {
		data, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "TracerPid:"); ok && strings.TrimSpace(v) != "0" {
				comm, _ := os.ReadFile("/proc/" + strings.TrimSpace(v) + "/comm")
				if strings.TrimSpace(string(comm)) == "criu" {
					t.Errorf("%s is traced by criu (pid %s)", st, strings.TrimSpace(v))
				}
			}
		}
	}
}

// Stateful stops and starts, then live moves back and forth, each bounded: the container ends
// up running once, its counter and connection carried on, nothing of CRIU left. CI runs a few;
// TANDEM_SOAK_CYCLES=50 TANDEM_SOAK_MOVES=20 is the soak.
func TestCheckpointCycles(t *testing.T) {
	testenv.Require(t, "checkpoint")
	cycles, moves := soakCount("CYCLES", 5), soakCount("MOVES", 4)
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	echo, _ := launchContainer(t, a, "c1")
	timedMust := func(h *daemonHarness, limit time.Duration, args ...string) time.Duration {
		t.Helper()
		start := time.Now()
		h.must(args...)
		took := time.Since(start)
		if took > limit {
			t.Errorf("tandem %s took %s (limit %s)", strings.Join(args, " "), took.Round(time.Millisecond), limit)
		}
		return took
	}
	var worst time.Duration
	for i := 0; i < cycles; i++ {
		worst = max(worst, timedMust(a, time.Minute, "stop", "c1", "--stateful"))
		worst = max(worst, timedMust(a, time.Minute, "start", "c1"))
		// The connection carries on after each restore (and the client's retransmission timer is
		// back to normal before the next freeze: freezes back to back would double it each time).
		if err := echo.WaitEcho(30 * time.Second); err != nil {
			t.Fatalf("cycle %d: the connection does not echo after the restore: %v", i+1, err)
		}
	}
	t.Logf("%d stateful stop/start cycles, slowest call %s", cycles, worst.Round(time.Millisecond))
	// One console log across the cycles: a boot instead of a restore would start again at 1.
	counterRuns(t, a, "c1")
	log, _, _ := a.tandem("console", "c1", "--show-log")
	n := numbers(ctCountRE, log)
	for i := 1; i < len(n); i++ {
		if n[i] < n[i-1] || n[i] > n[i-1]+2 {
			t.Fatalf("the counter went from %d to %d across the stateful stops", n[i-1], n[i])
		}
	}
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the cycles: %v", err)
	}
	hosts := []*daemonHarness{a, b}
	worst = 0
	for i := 0; i < moves; i++ {
		from, to := hosts[i%2], hosts[(i+1)%2]
		tap := tapConsole(t, from, "c1")
		time.Sleep(300 * time.Millisecond)
		worst = max(worst, timedMust(from, 2*time.Minute, "move", "c1", "--target", hostName((i+1)%2), "--live"))
		if err := echo.WaitEcho(30 * time.Second); err != nil {
			t.Fatalf("move %d: the connection does not echo after the move: %v", i+1, err)
		}
		if i == moves-1 {
			checkContinues(t, to, "c1", ctCountRE, numbers(ctCountRE, tap.String()))
		}
	}
	t.Logf("%d live moves, slowest %s", moves, worst.Round(time.Millisecond))
	last := hosts[moves%2]
	assertStatus(t, last, "c1", api.StatusRunning)
	if hasInstance(t, hosts[(moves+1)%2], "c1") {
		t.Error("both hosts list c1")
	}
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the moves: %v", err)
	}
	if err := echo.Check(); err != nil {
		t.Error(err)
	}
	noCRIULeft(t)
	last.must("delete", "--force", "c1")
}

// Cancelling a stateful stop whose dump hangs ends it at once: criu is killed, the container runs
// on as it was, and the operation says cancelled.
func TestStatefulStopCancelled(t *testing.T) {
	bin, _ := fakeCRIU(t, -1, true)
	h := startHost(t, "--accel", "tcg", "--criu", bin, "--criu-timeout", "5m")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "c1")
	h.must("exec", "c1", "--", "sh", "-c", ctWorkload)
	done := make(chan error, 1)
	go func() {
		_, errOut, err := h.tandem("stop", "c1", "--stateful")
		if err != nil {
			err = fmt.Errorf("%v: %s", err, errOut)
		}
		done <- err
	}()
	op := waitForRunningOperation(t, h, "c1")
	time.Sleep(2 * time.Second) // well into the hung dump
	start := time.Now()
	h.must("operation", "cancel", op)
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "cancel") {
			t.Fatalf("the cancelled stop: %v", err)
		}
		t.Logf("cancelled in %s: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatal("the stop did not end within 30s of its cancel")
	}
	var got api.Operation
	json.Unmarshal([]byte(h.must("operation", "show", op, "--format", "json")), &got)
	if got.Status != api.OpCancelled {
		t.Errorf("operation status %q, want %q", got.Status, api.OpCancelled)
	}
	assertStatus(t, h, "c1", api.StatusRunning)
	counterRuns(t, h, "c1")
	if out, _ := exec.Command("pgrep", "-f", "^"+bin+" ").Output(); len(out) > 0 {
		t.Errorf("criu still runs after the cancel: %s", out)
	}
	h.must("delete", "--force", "c1")
}
