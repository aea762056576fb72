package container

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/testenv"
)

// Limits reach the cgroup at boot and live; lxcfs shows them in /proc inside.
func TestLimitsLiveAndLXCFS(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "limits", map[string]string{"limits.memory": "64MiB", "limits.processes": "50", "limits.cpu": "1"})
	e.waitLog(t, h, "booted as limits")

	out, _ := e.run(t, h, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max")
	if f := strings.Fields(out); len(f) != 2 || f[0] != "67108864" || f[1] != "50" {
		t.Fatalf("cgroup limits inside: %q", out)
	}
	if e.d.lxcfsDir(testenv.Context(t, 5*time.Minute)) != "" {
		out, _ = e.run(t, h, "free -m | awk '/^Mem:/ {print $2}'; grep -c ^processor /proc/cpuinfo")
		if f := strings.Fields(out); len(f) != 2 || f[0] != "64" || f[1] != "1" {
			t.Errorf("free/cpuinfo inside (lxcfs): %q, want 64 MiB and 1 CPU", out)
		}
	} else {
		t.Log("lxcfs is not available: /proc inside shows the host")
	}

	spec := h.Spec
	spec.Config = map[string]string{"limits.memory": "128MiB"}
	if err := e.d.Update(testenv.Context(t, 5*time.Minute), h, &spec); err != nil {
		t.Fatalf("Update: %v", err)
	}
	out, _ = e.run(t, h, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max")
	if f := strings.Fields(out); len(f) != 2 || f[0] != "134217728" || f[1] != "max" {
		t.Fatalf("after a live update: %q, want 128MiB and no pids limit", out)
	}
}

func TestPauseAndStats(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "stats", nil)
	e.waitLog(t, h, "booted as stats")
	st, err := e.d.Stats(testenv.Context(t, 5*time.Minute), h)
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes < 2 || st.MemoryBytes == 0 || st.CPUTime == 0 {
		t.Errorf("stats %+v", st)
	}
	if err := e.d.Pause(testenv.Context(t, 5*time.Minute), h); err != nil {
		t.Fatal(err)
	}
	if _, err := e.d.Stats(testenv.Context(t, 5*time.Minute), h); err != nil {
		t.Errorf("stats of a paused container: %v", err)
	}
	if err := e.d.Resume(testenv.Context(t, 5*time.Minute), h); err != nil {
		t.Fatal(err)
	}
}

func TestExec(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "exec", nil)
	for _, want := range []int{0, 1, 42} {
		if _, code := e.run(t, h, "exit "+string(rune('0'+want/10))+string(rune('0'+want%10))); code != want {
			t.Errorf("exit code %d, want %d", code, want)
		}
	}
	ctx := testenv.Context(t, 5*time.Minute)
	var out, errOut bytes.Buffer
	code, err := e.d.Exec(ctx, h, ExecRequest{Cmd: []string{"/bin/sh", "-c", "tr a-z A-Z; echo oops >&2; pwd; echo $GREETING"},
		Stdin: strings.NewReader("from stdin\n"), Stdout: &out, Stderr: &errOut, Cwd: "/etc", Env: []string{"GREETING=hi"}})
	if err != nil || code != 0 || out.String() != "FROM STDIN\n/etc\nhi\n" || errOut.String() != "oops\n" {
		t.Errorf("stdio exec: code %d err %v stdout %q stderr %q", code, err, out.String(), errOut.String())
	}
	out.Reset()
	resize := make(chan Size, 1)
	resize <- Size{Rows: 50, Cols: 132}
	code, err = e.d.Exec(ctx, h, ExecRequest{Cmd: []string{"/bin/sh", "-c", "sleep 0.3; tty; stty size; exit 3"}, TTY: true,
		Size: Size{Rows: 30, Cols: 100}, Resize: resize, Stdout: &out})
	if err != nil || code != 3 || !strings.Contains(out.String(), "/dev/pts/") || !strings.Contains(out.String(), "50 132") {
		t.Errorf("tty exec: code %d err %v output %q", code, err, out.String())
	}
	if _, err := e.d.Exec(ctx, h, ExecRequest{Cmd: []string{"/no/such"}}); err == nil {
		t.Error("exec of a missing binary gave no error")
	}
}

func TestConsole(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "console", nil)
	e.waitLog(t, h, "booted as console")
	con, err := e.d.Console(testenv.Context(t, 5*time.Minute), h)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	if _, err := con.Write([]byte("\necho hello-$((6*7))\n")); err != nil {
		t.Fatal(err)
	}
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(con)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "hello-42") {
				found <- true
				return
			}
		}
		found <- false
	}()
	select {
	case ok := <-found:
		if !ok {
			t.Fatal("console closed without the echo")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no echo from the console shell in 10s")
	}
	e.waitLog(t, h, "hello-42")
}

// A second driver on the same directories (a restarted daemon) finds the container running, its
// console attached to the same shim, and stops it.
func TestRecoverAfterRestart(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "recover", nil)
	e.waitLog(t, h, "booted as recover")
	d2, err := New(e.d.opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testenv.Context(t, 5*time.Minute)
	if err := d2.Recover(ctx, h); err != nil {
		t.Fatal(err)
	}
	if st, _ := d2.State(ctx, h); st != driver.StatusRunning {
		t.Fatalf("state after recover: %s", st)
	}
	if d2.NetnsPath(h) == "" {
		t.Error("no network namespace path after recover")
	}
	con, err := d2.Console(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	con.Close()
	if err := d2.Stop(ctx, h, driver.StopOpts{Timeout: 20 * time.Second}); err != nil {
		t.Fatal(err)
	}
	e.waitLog(t, h, "shutting down")
}

// A counter in a shell variable survives a stateful stop and start.
func TestCheckpointRestore(t *testing.T) {
	e := newEnv(t)
	testenv.Require(t, "checkpoint")
	h := e.launch(t, "criu", map[string]string{"limits.memory": "96MiB"})
	ctx := testenv.Context(t, 5*time.Minute)
	// Written aside and renamed: a checkpoint between the truncate and the write would read "".
	e.run(t, h, "i=0; (while true; do i=$((i+1)); echo $i > /root/count.new; mv /root/count.new /root/count; sleep 0.1; done) >/dev/null 2>&1 </dev/null &")
	time.Sleep(500 * time.Millisecond)
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatalf("stateful stop: %v", err)
	}
	if st, _ := e.d.State(ctx, h); st != driver.StatusStopped {
		t.Fatalf("state after checkpoint: %s", st)
	}
	before, _ := readCount(e, h)
	if err := e.d.Start(ctx, h); err != nil {
		out, _ := exec.Command("ls", "-lnd", e.d.paths(h.ID).checkpoint, e.d.paths(h.ID).checkpoint+"/timens-0.img", e.d.paths(h.ID).bundle, e.dir, e.dir+"/c").CombinedOutput()
		t.Logf("%s", out)
		t.Fatalf("start (restore): %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	out, _ := e.run(t, h, "cat /root/count")
	after := strings.TrimSpace(out)
	if before == "" || after == "" || atoi(after) <= atoi(before) || atoi(after) > atoi(before)+20 {
		t.Fatalf("counter before %q after %q: not continued", before, after)
	}
	if out, code := e.run(t, h, "free -m | awk '/^Mem:/ {print $2}'; uptime"); code != 0 || !strings.HasPrefix(out, "96\n") {
		t.Errorf("free after restore: %q (exit %d)", out, code)
	}
	if out, _ := e.run(t, h, "ip -o link show lo"); !strings.Contains(out, ",UP") {
		t.Errorf("lo after restore: %q", out)
	}
	if has, _ := e.d.HasCheckpoint(ctx, h); has {
		t.Error("checkpoint still pending after restore")
	}
	// The console survived too.
	con, err := e.d.Console(ctx, h)
	if err != nil {
		t.Fatalf("console after restore: %v", err)
	}
	con.Close()
}

// readCount reads the counter file from a stopped container's rootfs.
func readCount(e *env, h *driver.Handle) (string, error) {
	data, err := os.ReadFile(filepath.Join(e.d.paths(h.ID).rootfs, "root", "count"))
	return strings.TrimSpace(string(data)), err
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// security.privileged runs without a user namespace; changing it on a stopped container
// re-owns the rootfs into an id range.
func TestPrivilegedToggle(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "priv", map[string]string{"security.privileged": "true"})
	if out, _ := e.run(t, h, "cat /proc/self/uid_map"); strings.Fields(out)[1] != "0" {
		t.Fatalf("privileged uid_map %q", out)
	}
	ctx := testenv.Context(t, 5*time.Minute)
	spec := h.Spec
	spec.Config = map[string]string{}
	if err := e.d.Update(ctx, h, &spec); err == nil {
		t.Fatal("security.privileged changed on a running container")
	}
	if err := e.d.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Update(ctx, h, &spec); err != nil {
		t.Fatalf("unprivileged update: %v", err)
	}
	if err := e.d.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	out, _ := e.run(t, h, "cat /proc/self/uid_map; stat -c %u /bin/busybox")
	if f := strings.Fields(out); len(f) != 4 || f[1] != "1000000" || f[3] != "0" {
		t.Fatalf("after the switch: %q (want mapped to 1000000, files owned by root inside)", out)
	}
}
