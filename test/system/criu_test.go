package system

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/testenv"
)

// fakeCRIU builds test/fakecriu, a criu that hangs in dumps as the real one does on hosts where
// compel's breakpoint never traps: hangs dumps hang (-1: all), only runc's if swrkOnly (not the
// probe's). It returns the binary and its call log.
func fakeCRIU(t *testing.T, hangs int, swrkOnly bool) (bin, log string) {
	t.Helper()
	real, err := exec.LookPath("criu")
	if err != nil {
		real = "/usr/local/sbin/criu"
		if _, err := os.Stat(real); err != nil {
			testenv.Missing(t, "CRIU is not installed (scripts/setup.sh builds it)")
		}
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin, log = filepath.Join(dir, "criu"), filepath.Join(dir, "calls.log")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", bin, "./test/fakecriu")
	build.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build fakecriu: %v\n%s", err, out)
	}
	conf, _ := json.Marshal(map[string]any{"real": real, "hangs": hangs, "swrk_only": swrkOnly, "log": log})
	if err := os.WriteFile(bin+".json", conf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("pkill", "-KILL", "-f", "^"+bin+" ").Run() })
	return bin, log
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
