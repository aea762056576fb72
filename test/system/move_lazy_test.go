package system

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/testenv"
)

// requireLazyMoves readies this machine for lazy container moves, or skips saying what is absent:
// CRIU with userfaultfd support, and fs.pipe-max-size >= 4 MiB for CRIU's page server (setup.sh
// raises it for good; here it is raised for the test and put back). It returns the launch flags
// of a container that can be restored lazily: privileged unless vm.unprivileged_userfaultfd=1.
func requireLazyMoves(t *testing.T) []string {
	t.Helper()
	testenv.Require(t, "checkpoint")
	criu, err := testenv.CRIU()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(criu, "check", "--feature", "uffd-noncoop").CombinedOutput(); err != nil {
		testenv.Unsupported(t, "CRIU has no userfaultfd support on this kernel: %s", strings.TrimSpace(string(out)))
	}
	const pipeMax = "/proc/sys/fs/pipe-max-size"
	old, err := os.ReadFile(pipeMax)
	if err != nil {
		testenv.Unsupported(t, "%v", err)
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(old))); n < 4<<20 {
		if err := os.WriteFile(pipeMax, []byte("4194304"), 0o644); err != nil {
			testenv.Unsupported(t, "cannot raise %s for CRIU's page server: %v", pipeMax, err)
		}
		t.Cleanup(func() { os.WriteFile(pipeMax, old, 0o644) })
	}
	if v, _ := os.ReadFile("/proc/sys/vm/unprivileged_userfaultfd"); strings.TrimSpace(string(v)) == "1" {
		return nil
	}
	t.Log("vm.unprivileged_userfaultfd=0: the container is privileged (a user namespace's tasks may not open a userfaultfd)")
	return []string{"-c", "security.privileged=true"}
}

// waitFrozen waits until the source's move operation is in the freeze (dumping or copying the
// dump), and returns its message.
func waitFrozen(t *testing.T, h *daemonHarness) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		var ops []api.Operation
		json.Unmarshal([]byte(h.must("operation", "list", "--format", "json")), &ops)
		for _, op := range ops {
			msg := op.Progress.Message
			if op.Status == api.OpRunning && strings.Contains(op.Description, "oving") &&
				(strings.HasPrefix(msg, "freezing") || strings.HasPrefix(msg, "copying what changed") || strings.HasPrefix(msg, "copying the dump")) {
				return msg
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no move reached the freeze")
	return ""
}

// logFreeze logs the source's breakdown of a container move's freeze.
func logFreeze(t *testing.T, h *daemonHarness) {
	for _, line := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(line, "container moved") || strings.Contains(line, "every page arrived") {
			t.Log(line)
		}
	}
}

// A container with an in-memory counter and an established TCP connection moves live from A to B
// post-copy (it runs on B while its memory follows): the counter carries on, the connection
// echoes. Before that, a lazy move whose destination dies while the container is frozen on A
// resumes it on A; after it, the move back with lazy pages turned off says so.
func TestMoveContainerLazy(t *testing.T) {
	cfg := requireLazyMoves(t)
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	echo, _ := launchContainer(t, a, "c1", append([]string{"-c", "limits.memory=128MiB"}, cfg...)...)
	nics := nicsOf(t, a, "c1")

	// B dies while A holds the container frozen for a lazy move (the capped copy of the dump keeps
	// it there for a while): A resumes it, the connection carries on, B holds nothing after its restart.
	done := runMove(a, "c1", "--target", "host-b", "--live", "--lazy", "--bandwidth", "256KiB")
	t.Logf("killing B at: %s", waitFrozen(t, a))
	b.stop(syscall.SIGKILL)
	moveFailed(t, done, 2*time.Minute, "lazy move with the destination killed in the freeze")
	assertStatus(t, a, "c1", api.StatusRunning)
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection broke when A resumed: %v", err)
	}
	b.start()
	if hasInstance(t, b, "c1") {
		t.Error("B holds c1 after its restart")
	}

	// The lazy move.
	tap := tapConsole(t, a, "c1")
	time.Sleep(time.Second)
	start := time.Now()
	out := a.must("move", "c1", "--target", "host-b", "--live", "--lazy")
	t.Logf("%s (CLI: %v)", strings.TrimSpace(out), time.Since(start).Round(time.Millisecond))
	logFreeze(t, a)
	for _, want := range []string{"(lazy)", "frozen", "memory followed in"} {
		if !strings.Contains(out, want) {
			t.Errorf("the move's report lacks %q: %q", want, out)
		}
	}
	if hasInstance(t, a, "c1") {
		t.Fatal("A still lists c1 after the lazy move")
	}
	checkArrived(t, b, "c1", nics)
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the lazy move: %v", err)
	}
	if err := echo.Check(); err != nil {
		t.Error(err)
	}
	checkContinues(t, b, "c1", ctCountRE, numbers(ctCountRE, tap.String()))
	t.Logf("longest echo gap %v", echo.MaxGap().Round(time.Millisecond))
	if !strings.Contains(b.log.String(), "every page arrived") {
		t.Error("B's log does not say every page arrived")
	}

	// Back to A with lazy pages turned off: a plain live move that says why.
	tap = tapConsole(t, b, "c1")
	time.Sleep(time.Second)
	out = b.must("move", "c1", "--target", "host-a", "--live", "--lazy=false")
	t.Logf("%s", strings.TrimSpace(out))
	logFreeze(t, b)
	if !strings.Contains(out, "(live-copy)") || !strings.Contains(out, "lazy pages: not used: turned off") {
		t.Errorf("the move with lazy pages off: %q", out)
	}
	checkArrived(t, a, "c1", nics)
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the move back: %v", err)
	}
	checkContinues(t, a, "c1", ctCountRE, numbers(ctCountRE, tap.String()))
	a.must("delete", "--force", "c1") // containers outlive their daemon
}

// hogMemory makes the container hold about mib MiB of random data in a process that sleeps as
// `sleep <tag>`, so that a lazy move has pages to carry.
func hogMemory(t *testing.T, h *daemonHarness, name string, mib int, tag string) {
	t.Helper()
	h.must("exec", name, "--", "sh", "-c", fmt.Sprintf("(dd if=/dev/urandom bs=%dM count=1 | sleep %s) </dev/null >/dev/null 2>&1 &", mib, tag))
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := h.tandem("exec", name, "--", "ps", "-o", "rss,args")
		if strings.Contains(out, fmt.Sprintf("%dm {dd}", mib)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the memory hog does not hold %d MiB: %s", mib, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// hostProcs counts the processes on this machine (all hosts of the lab) running exactly cmdline.
func hostProcs(cmdline string) int {
	out, _ := exec.Command("pgrep", "-x", "-f", cmdline).Output()
	return len(strings.Fields(string(out)))
}

// B's daemon dies while a lazily moved container's memory is still on A (the move's bandwidth cap
// stretches the transfer): the move fails, B's copy, whose memory has holes, is killed without
// B's daemon, and A, which kept every page, resumes with its memory intact.
func TestMoveContainerLazyDestinationDies(t *testing.T) {
	cfg := requireLazyMoves(t)
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	launchContainer(t, a, "big", append([]string{"-c", "limits.memory=512MiB"}, cfg...)...)
	tag := strconv.FormatInt(100000+time.Now().UnixNano()/1000%800000, 10) // this run's hog
	hogMemory(t, a, "big", 96, tag)

	done := runMove(a, "big", "--target", "host-b", "--live", "--lazy", "--bandwidth", "8MiB")
	waitMoveStep(t, a, "memory follows")
	if n := hostProcs("sleep " + tag); n != 2 {
		t.Logf("%d copies of the hog run while the memory follows (A frozen, B restored): want 2", n)
	}
	b.stop(syscall.SIGKILL)
	start := time.Now()
	// B's guard kills B's copy at once, without B's daemon; A's frozen copy stays.
	for hostProcs("sleep "+tag) != 1 {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%d copies of the hog run 10s after B's daemon died, want 1 (A's, frozen)", hostProcs("sleep "+tag))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("B's copy was killed %v after its daemon", time.Since(start).Round(time.Millisecond))
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the move succeeded with its destination killed mid-transfer")
		}
		if !strings.Contains(err.Error(), "memory transfer") {
			t.Errorf("the move's error does not say the memory transfer failed: %v", err)
		}
		t.Logf("move failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the move did not end within 2m")
	}
	if n := hostProcs("sleep " + tag); n != 1 {
		t.Errorf("%d copies of the hog run after the failed move, want 1 (A's)", n)
	}
	assertStatus(t, a, "big", api.StatusRunning)
	if out := a.must("exec", "big", "--", "ps", "-o", "rss,args"); !strings.Contains(out, "96m {dd}") {
		t.Errorf("A's memory hog lost its memory: %s", out)
	}
	before, _, _ := a.tandem("console", "big", "--show-log")
	time.Sleep(2 * time.Second)
	after, _, _ := a.tandem("console", "big", "--show-log")
	if nb, na := numbers(ctCountRE, before), numbers(ctCountRE, after); len(na) <= len(nb) {
		t.Errorf("the counter stopped on A: %d lines, then %d", len(nb), len(na))
	}
	b.start()
	if hasInstance(t, b, "big") {
		t.Error("B holds big after its restart")
	}
	a.must("delete", "--force", "big") // containers outlive their daemon
}
