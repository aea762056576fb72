package system

// System tests of the container driver through its Go API (to be driven through the CLI once the
// daemon wires the driver in). They need root, runc and busybox-static, and CRIU for the
// checkpoint test; each skips with the reason when something is missing, and each is bounded.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container"
	"tandem/internal/image"
	"tandem/internal/testenv"
)

// The test binary doubles as the container shim (the driver re-executes /proc/self/exe) and as
// the "daemon" that TestContainersSurviveDaemonKill kills.
func init() {
	container.MaybeRunShim()
	if os.Getenv(ctHelperEnv) != "" {
		os.Exit(runDaemonHelper())
	}
}

// dirImages serves one unpacked rootfs for every image name.
type dirImages struct {
	Dir  string
	Info driver.ImageInfo
}

func (i dirImages) Rootfs(ctx context.Context, name string) (string, driver.ImageInfo, error) {
	return i.Dir, i.Info, nil
}

// ctEnv is a driver on fresh short directories with its own cgroup parent.
type ctEnv struct {
	t    *testing.T
	d    *container.Driver
	opts container.Options
	base string
}

// newCtEnv builds the busybox image with the image library, unpacks it as the image store would,
// and makes a driver serving it.
func newCtEnv(t *testing.T) *ctEnv {
	t.Helper()
	testenv.Require(t, realContainers...)
	ctx := testenv.Context(t, 2*time.Minute)
	base, err := os.MkdirTemp("", "tct-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o711) // container roots (unmapped uids) traverse it to their rootfs
	e := &ctEnv{t: t, base: base}
	t.Cleanup(e.close)
	tarball, err := image.BuildBusybox(ctx, image.BusyboxOptions{Output: filepath.Join(base, "busybox.tar.zst")})
	if err != nil {
		t.Fatalf("build busybox image: %v", err)
	}
	store, err := image.Open(filepath.Join(base, "images"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	img, err := store.ImportFile(ctx, tarball, image.ImportOptions{})
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	rootfs := filepath.Join(base, "rootfs")
	if err := store.UnpackRootfs(ctx, img.Fingerprint, rootfs, image.UnpackOptions{}); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	e.opts = container.Options{
		Dir: filepath.Join(base, "c"), RunDir: filepath.Join(base, "r"),
		Images:       dirImages{Dir: rootfs, Info: driver.ImageInfo{Fingerprint: img.Fingerprint, OS: "busybox", ShutdownSignal: img.Metadata.ShutdownSignal}},
		CgroupParent: fmt.Sprintf("tandem-systest-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6),
	}
	if e.d, err = container.New(e.opts); err != nil {
		t.Fatal(err)
	}
	if info := e.d.Info(ctx); !info.Available {
		t.Fatalf("driver not available: %s", info.Reason)
	}
	return e
}

func (e *ctEnv) close() {
	for _, cg := range cgroupDirs(e.opts.CgroupParent) {
		os.Remove(cg)
	}
	os.RemoveAll(e.base)
}

// cgroupDirs lists the cgroup directories named parent in every hierarchy (v1 and v2).
func cgroupDirs(parent string) []string {
	v1, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
	v2, _ := filepath.Glob("/sys/fs/cgroup/" + parent)
	return append(v1, v2...)
}

// cgroupFile returns a file of a container's cgroup for controller (v1), or its v2 equivalent.
func (e *ctEnv) cgroupFile(h *driver.Handle, controller, v1name, v2name string) string {
	v1 := filepath.Join("/sys/fs/cgroup", controller, e.opts.CgroupParent, h.ID, v1name)
	if _, err := os.Stat(v1); err == nil {
		return v1
	}
	return filepath.Join("/sys/fs/cgroup", e.opts.CgroupParent, h.ID, v2name)
}

// launch creates and starts a container, force-stopped and deleted at the end of the test.
func (e *ctEnv) launch(name string, config map[string]string) *driver.Handle {
	e.t.Helper()
	ctx := testenv.Context(e.t, time.Minute)
	if config == nil {
		config = map[string]string{}
	}
	spec := &driver.Spec{ID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()), Name: name, Type: "container", Image: "busybox", Config: config}
	h, err := e.d.Create(ctx, spec)
	if err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		e.d.Stop(ctx, h, driver.StopOpts{Force: true})
		if err := e.d.Delete(ctx, h); err != nil {
			e.t.Errorf("delete %s: %v", name, err)
		}
	})
	if err := e.d.Start(ctx, h); err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	return h
}

// sh runs a shell script inside with a deadline and returns its combined output and exit code.
func (e *ctEnv) sh(h *driver.Handle, script string) (string, int) {
	e.t.Helper()
	ctx := testenv.Context(e.t, time.Minute)
	var out bytes.Buffer
	code, err := e.d.Exec(ctx, h, container.ExecRequest{Cmd: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &out})
	if err != nil {
		e.t.Fatalf("exec %q: %v", script, err)
	}
	return out.String(), code
}

func (e *ctEnv) wantRunning(h *driver.Handle) {
	e.t.Helper()
	if st, err := e.d.State(testenv.Context(e.t, 5*time.Minute), h); err != nil || st != driver.StatusRunning {
		e.t.Fatalf("state %s (%v), want Running", st, err)
	}
}

// Init is PID 1, the hostname is the instance name, root inside is a high uid outside, and the
// usual ways out are closed.
func TestContainerIsolation(t *testing.T) {
	e := newCtEnv(t)
	h := e.launch("iso1", nil)

	if out, _ := e.sh(h, "ps -o pid,comm | awk '$1 == 1 {print $2}'"); strings.TrimSpace(out) != "init" {
		t.Errorf("PID 1 inside is %q, want init", out)
	}
	time.Sleep(300 * time.Millisecond) // rcS sets the hostname from /etc/hostname
	if out, _ := e.sh(h, "hostname"); strings.TrimSpace(out) != "iso1" {
		t.Errorf("hostname %q, want iso1", out)
	}
	if out, _ := e.sh(h, "id -u"); strings.TrimSpace(out) != "0" {
		t.Errorf("id -u inside: %q", out)
	}
	procs, err := os.ReadFile(e.cgroupFile(h, "pids", "cgroup.procs", "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) == 0 {
		t.Fatalf("container processes: %q %v", procs, err)
	}
	for _, pid := range strings.Fields(string(procs)) {
		var st syscall.Stat_t
		if err := syscall.Stat("/proc/"+pid, &st); err == nil && st.Uid < 100000 {
			t.Errorf("container process %s runs as host uid %d", pid, st.Uid)
		}
	}

	var root syscall.Stat_t
	syscall.Stat("/", &root)
	major, minor := (root.Dev>>8)&0xfff, (root.Dev&0xff)|((root.Dev>>12)&0xfff00)
	agentBefore, _ := os.ReadFile("/sys/fs/cgroup/memory/release_agent")
	script := fmt.Sprintf(`
echo h > /proc/sysrq-trigger 2>/dev/null && echo ESCAPE-sysrq
mknod /tmp/blk b 7 0 2>/dev/null && echo ESCAPE-mknod
mkdir -p /tmp/m
mount -t devtmpfs devtmpfs /tmp/m 2>/dev/null && echo ESCAPE-devtmpfs
mknod /tmp/disk b %d %d 2>/dev/null && mount -o ro /tmp/disk /tmp/m 2>/dev/null && echo ESCAPE-hostdisk
mount -t ext4 /dev/vda /tmp/m 2>/dev/null && echo ESCAPE-vda
for f in /sys/fs/cgroup/release_agent /sys/fs/cgroup/*/release_agent; do
	[ -e "$f" ] && echo /tmp/pwn > "$f" 2>/dev/null && echo ESCAPE-release_agent
done
mkdir -p /tmp/cg
mount -t cgroup -o memory cgroup /tmp/cg 2>/dev/null && echo /tmp/pwn > /tmp/cg/release_agent 2>/dev/null && echo ESCAPE-new-release_agent
echo checked`, major, minor)
	out, _ := e.sh(h, script)
	if strings.Contains(out, "ESCAPE") || !strings.Contains(out, "checked") {
		t.Errorf("escape attempts:\n%s", out)
	}
	if after, _ := os.ReadFile("/sys/fs/cgroup/memory/release_agent"); !bytes.Equal(agentBefore, after) {
		t.Errorf("host release_agent changed: %q", after)
	}
	e.wantRunning(h)
}

// limits.memory shows in free inside, and an allocation beyond it is OOM-killed while init lives.
func TestContainerMemoryLimit(t *testing.T) {
	e := newCtEnv(t)
	h := e.launch("mem1", map[string]string{"limits.memory": "64MiB"})
	if out, _ := e.sh(h, "free -m | awk '/^Mem:/ {print $2}'"); strings.TrimSpace(out) != "64" {
		t.Errorf("free inside says %q MiB, want 64", out)
	}
	if out, _ := e.sh(h, "awk '/^MemTotal:/ {print $2}' /proc/meminfo"); strings.TrimSpace(out) != "65536" {
		t.Logf("/proc/meminfo MemTotal %q kB (65536 with lxcfs)", strings.TrimSpace(out))
	}
	start := time.Now()
	out, _ := e.sh(h, "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null; echo dd=$?")
	if !strings.Contains(out, "dd=137") {
		t.Errorf("200 MiB allocation in a 64 MiB container: %q, want killed (137)", out)
	}
	t.Logf("OOM kill took %v", time.Since(start))
	if out, _ := e.sh(h, "cat /proc/1/comm"); strings.TrimSpace(out) != "init" {
		t.Errorf("init after the OOM kill: %q", out)
	}
	e.wantRunning(h)
}

// limits.processes caps a fork bomb; the host and the driver stay in control.
func TestContainerForkBomb(t *testing.T) {
	e := newCtEnv(t)
	h := e.launch("bomb1", map[string]string{"limits.processes": "50"})
	ctx := testenv.Context(t, 4*time.Second)
	e.d.Exec(ctx, h, container.ExecRequest{Cmd: []string{"/bin/sh", "-c", "f() { f | f & }; f; wait"}})
	cur, _ := os.ReadFile(e.cgroupFile(h, "pids", "pids.current", "pids.current"))
	events, _ := os.ReadFile(e.cgroupFile(h, "pids", "pids.events", "pids.events"))
	if n, err := strconv.Atoi(strings.TrimSpace(string(cur))); err != nil || n > 50 {
		t.Errorf("pids.current %q, want at most 50", cur)
	}
	if !strings.Contains(string(events), "max") || strings.Contains(string(events), "max 0") {
		t.Errorf("pids.events %q: the limit was never hit", events)
	}
	if err := exec.Command("true").Run(); err != nil {
		t.Fatalf("the host cannot fork: %v", err)
	}
	start := time.Now()
	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if err := e.d.Stop(sctx, h, driver.StopOpts{Force: true}); err != nil {
		t.Fatalf("force stop of a bombed container: %v", err)
	}
	t.Logf("force stop with %s processes took %v", strings.TrimSpace(string(cur)), time.Since(start))
}

// exec passes exit codes and stdin; the console shows init's output and takes input.
func TestContainerExecAndConsole(t *testing.T) {
	e := newCtEnv(t)
	h := e.launch("io1", nil)
	for _, want := range []int{0, 1, 42} {
		if _, code := e.sh(h, fmt.Sprintf("exit %d", want)); code != want {
			t.Errorf("exit code %d, want %d", code, want)
		}
	}
	var out bytes.Buffer
	code, err := e.d.Exec(testenv.Context(t, 5*time.Minute), h, container.ExecRequest{Cmd: []string{"/bin/sh", "-c", "wc -l; cat"},
		Stdin: strings.NewReader("a\nb\nc\n"), Stdout: &out})
	if err != nil || code != 0 || strings.Fields(out.String())[0] != "3" {
		t.Errorf("stdin through exec: %q code %d err %v", out.String(), code, err)
	}

	con, err := e.d.Console(testenv.Context(t, 5*time.Minute), h)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(con)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	con.Write([]byte("\necho console-$((6*7))\n"))
	deadline := time.After(15 * time.Second)
	for found := false; !found; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("console closed")
			}
			found = strings.Contains(l, "console-42")
		case <-deadline:
			t.Fatal("the console shell did not answer within 15s")
		}
	}
	log := readConsoleLog(t, e.d, h)
	if !strings.Contains(log, "io1:") || !strings.Contains(log, "console-42") {
		t.Errorf("console log lacks the prompt or the echo:\n%s", log)
	}
}

func readConsoleLog(t *testing.T, d *container.Driver, h *driver.Handle) string {
	r, err := d.ConsoleLog(testenv.Context(t, 5*time.Minute), h)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, _ := io.ReadAll(r)
	return string(data)
}

// A counter kept in a shell variable survives stop --stateful and start.
func TestContainerCheckpointCounter(t *testing.T) {
	e := newCtEnv(t)
	testenv.Require(t, "checkpoint")
	h := e.launch("criu1", nil)
	e.sh(h, "(i=0; while :; do i=$((i+1)); echo $i > /root/count.new; mv /root/count.new /root/count; sleep 0.1; done) </dev/null >/dev/null 2>&1 &")
	time.Sleep(time.Second)
	ctx := testenv.Context(t, time.Minute)
	start := time.Now()
	if err := e.d.Stop(ctx, h, driver.StopOpts{Stateful: true}); err != nil {
		t.Fatalf("stop --stateful: %v", err)
	}
	dump := time.Since(start)
	rootfs := filepath.Join(e.opts.Dir, h.ID, "rootfs")
	before := readInt(t, filepath.Join(rootfs, "root", "count"))
	time.Sleep(500 * time.Millisecond)
	if again := readInt(t, filepath.Join(rootfs, "root", "count")); again != before {
		t.Fatalf("the counter moved while stopped: %d -> %d", before, again)
	}
	start = time.Now()
	if err := e.d.Start(ctx, h); err != nil {
		t.Fatalf("start (restore): %v", err)
	}
	restore := time.Since(start)
	time.Sleep(time.Second)
	out, _ := e.sh(h, "cat /root/count")
	after, _ := strconv.Atoi(strings.TrimSpace(out))
	if after <= before || after > before+30 {
		t.Fatalf("counter %d at the checkpoint, %d after the restore: it did not carry on", before, after)
	}
	t.Logf("counter %d -> %d; checkpoint %v, restore %v", before, after, dump, restore)
}

func readInt(t *testing.T, path string) int {
	data, err := os.ReadFile(path)
	n, err2 := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || err2 != nil {
		t.Fatalf("read %s: %q %v %v", path, data, err, err2)
	}
	return n
}

// 50 containers launched and deleted leave no cgroup, mount, network namespace, process, id
// range or file behind.
func TestContainerLeaks(t *testing.T) {
	e := newCtEnv(t)
	ctx := testenv.Context(t, 5*time.Minute)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	work := make(chan int)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := cycle(ctx, e.d, i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < 50; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("50 launches and deletes took %v", time.Since(start))

	for _, cg := range cgroupDirs(e.opts.CgroupParent) {
		if left, _ := filepath.Glob(cg + "/*/"); len(left) > 0 {
			t.Errorf("cgroups left: %v", left)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), e.base) {
		t.Errorf("mounts left under %s", e.base)
	}
	if left, _ := os.ReadDir(e.opts.Dir); len(left) > 0 {
		for _, f := range left {
			if f.Name() != "idmap.json" && !strings.HasPrefix(f.Name(), "lxcfs.") {
				t.Errorf("file left in %s: %s", e.opts.Dir, f.Name())
			}
		}
	}
	if idmap, _ := os.ReadFile(filepath.Join(e.opts.Dir, "idmap.json")); strings.Contains(string(idmap), "leak-") {
		t.Errorf("id ranges left: %s", idmap)
	}
	runDir, _ := os.ReadDir(e.opts.RunDir)
	for _, f := range runDir {
		if f.Name() != "runc" {
			t.Errorf("run directory left: %s", f.Name())
		}
	}
	if states, _ := os.ReadDir(filepath.Join(e.opts.RunDir, "runc")); len(states) > 0 {
		t.Errorf("runc state left: %d containers", len(states))
	}
	if out, _ := exec.Command("pgrep", "-f", e.base).Output(); len(out) > 0 {
		t.Errorf("processes left: %s", out)
	}
}

func cycle(ctx context.Context, d *container.Driver, i int) error {
	spec := &driver.Spec{ID: fmt.Sprintf("leak-%d-%d", i, time.Now().UnixNano()), Name: fmt.Sprintf("leak%d", i),
		Type: "container", Image: "busybox", Config: map[string]string{"limits.memory": "32MiB"}}
	h, err := d.Create(ctx, spec)
	if err != nil {
		return fmt.Errorf("create %d: %w", i, err)
	}
	if err := d.Start(ctx, h); err != nil {
		d.Delete(ctx, h)
		return fmt.Errorf("start %d: %w", i, err)
	}
	if d.NetnsPath(h) == "" {
		return fmt.Errorf("container %d has no network namespace path", i)
	}
	if err := d.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
		return fmt.Errorf("stop %d: %w", i, err)
	}
	if err := d.Delete(ctx, h); err != nil {
		return fmt.Errorf("delete %d: %w", i, err)
	}
	return nil
}

const ctHelperEnv = "TANDEM_CT_DAEMON_HELPER"

// runDaemonHelper is a stand-in daemon: it starts three containers with the driver options it is
// given, prints their handles and waits to be killed.
func runDaemonHelper() int {
	var opts struct {
		Dir, RunDir, CgroupParent, Rootfs, Signal string
	}
	if err := json.Unmarshal([]byte(os.Getenv(ctHelperEnv)), &opts); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, err := container.New(container.Options{Dir: opts.Dir, RunDir: opts.RunDir, CgroupParent: opts.CgroupParent,
		Images: dirImages{Dir: opts.Rootfs, Info: driver.ImageInfo{ShutdownSignal: opts.Signal}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < 3; i++ {
		spec := &driver.Spec{ID: fmt.Sprintf("kill-%d-%d", i, time.Now().UnixNano()), Name: fmt.Sprintf("k%d", i),
			Type: "container", Image: "busybox", Config: map[string]string{}}
		h, err := d.Create(ctx, spec)
		if err == nil {
			err = d.Start(ctx, h)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		data, _ := json.Marshal(h)
		fmt.Println(string(data))
	}
	select {} // until SIGKILL
}

// SIGKILL the daemon while 3 containers run; a new one finds all 3 running and can stop them.
func TestContainersSurviveDaemonKill(t *testing.T) {
	e := newCtEnv(t)
	cfg, _ := json.Marshal(map[string]string{"Dir": e.opts.Dir, "RunDir": e.opts.RunDir, "CgroupParent": e.opts.CgroupParent,
		"Rootfs": e.opts.Images.(dirImages).Dir, "Signal": e.opts.Images.(dirImages).Info.ShutdownSignal})
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), ctHelperEnv+"="+string(cfg))
	helper.Stderr = os.Stderr
	stdout, _ := helper.StdoutPipe()
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var handles []*driver.Handle
	sc := bufio.NewScanner(stdout)
	got := make(chan struct{})
	go func() {
		for len(handles) < 3 && sc.Scan() {
			h := &driver.Handle{}
			if json.Unmarshal(sc.Bytes(), h) == nil {
				handles = append(handles, h)
			}
		}
		close(got)
	}()
	select {
	case <-got:
	case <-time.After(time.Minute):
		helper.Process.Kill()
		t.Fatal("the helper daemon did not start 3 containers within a minute")
	}
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	if len(handles) != 3 {
		t.Fatalf("helper started %d containers", len(handles))
	}
	ctx := testenv.Context(t, 2*time.Minute)
	for _, h := range handles {
		if err := e.d.Recover(ctx, h); err != nil {
			t.Errorf("recover %s: %v", h.Spec.Name, err)
		}
		if st, _ := e.d.State(ctx, h); st != driver.StatusRunning {
			t.Errorf("%s is %s after the daemon was killed", h.Spec.Name, st)
		}
		if out, _ := e.sh(h, "echo alive"); strings.TrimSpace(out) != "alive" {
			t.Errorf("exec in %s after recovery: %q", h.Spec.Name, out)
		}
	}
	for _, h := range handles {
		if err := e.d.Stop(ctx, h, driver.StopOpts{Timeout: 20 * time.Second}); err != nil {
			t.Errorf("stop %s: %v", h.Spec.Name, err)
		}
		if st, _ := e.d.State(ctx, h); st != driver.StatusStopped {
			t.Errorf("%s is %s after stop", h.Spec.Name, st)
		}
		if err := e.d.Delete(ctx, h); err != nil {
			t.Errorf("delete %s: %v", h.Spec.Name, err)
		}
	}
}
