package system

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/driver/container/containertest"
	"tandem/internal/testenv"
)

// A lab of hosts on this machine, as `tandem move` sees real ones: a network namespace per host
// with its own tandemd and state dir; a management link between the daemons (HTTPS, mutual TLS,
// every byte of a move); an L2 segment for instances (a root-namespace bridge the hosts' "lab"
// networks are bridged to, like a top-of-rack switch). The test process, in the root namespace on
// that segment, is the client on another host. A directory every host sees is the shared pool.
type lab struct {
	t      *testing.T
	subnet string // the instances' segment
	client string // the test process's address on it
	hosts  []*daemonHarness
	mgmt   []string // each host's management link, inside its namespace
	shared string
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func hostName(i int) string { return fmt.Sprintf("host-%c", 'a'+i) }

func newLab(t *testing.T, n int) *lab {
	t.Helper()
	return newLabWith(t, n, nil)
}

// newLabWith is newLab with extra tandemd flags for host i (hostFlags may be nil).
func newLabWith(t *testing.T, n int, hostFlags func(i int) []string) *lab {
	t.Helper()
	testenv.Require(t, realDrivers...)
	testenv.Require(t, "rsync")
	id := fmt.Sprintf("%04d", time.Now().UnixNano()/1000%10000)
	labBr, mgBr := "tl"+id, "tm"+id
	for _, br := range []string{labBr, mgBr} {
		mustRun(t, "ip", "link", "add", br, "type", "bridge")
		br := br
		t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
		mustRun(t, "ip", "link", "set", br, "up")
	}
	// A subnet and management addresses of its own: another lab may run (or have been left) here.
	n3 := time.Now().UnixNano() / 1000 % 200
	l := &lab{t: t, shared: t.TempDir(), subnet: fmt.Sprintf("10.123.%d.0/24", n3), client: fmt.Sprintf("10.123.%d.250", n3)}
	mustRun(t, "ip", "addr", "add", l.client+"/24", "dev", labBr)
	os.Chmod(l.shared, 0o711)
	os.Chmod(filepath.Dir(l.shared), 0o711) // QEMU runs as tandem-qemu: it must reach the pool
	for i := 0; i < n; i++ {
		mg, lk := fmt.Sprintf("m%s%d", id, i), fmt.Sprintf("l%s%d", id, i)
		addr := fmt.Sprintf("198.18.%d.%d", n3, i+1)
		flags := []string{"--accel", "tcg", "--listen", addr + ":8443"}
		if hostFlags != nil {
			flags = append(flags, hostFlags(i)...)
		}
		h := startHostWith(t, func(ns string) {
			mustRun(t, "ip", "link", "add", mg, "type", "veth", "peer", "name", mg+"p")
			mustRun(t, "ip", "link", "set", mg, "netns", ns)
			mustRun(t, "ip", "link", "set", mg+"p", "master", mgBr, "up")
			mustRun(t, "ip", "-n", ns, "addr", "add", addr+"/24", "dev", mg)
			mustRun(t, "ip", "-n", ns, "link", "set", mg, "up")
		}, flags...)
		// The host's "lab" network is bridged to the segment through its uplink.
		mustRun(t, "ip", "link", "add", lk, "type", "veth", "peer", "name", lk+"p")
		mustRun(t, "ip", "link", "set", lk, "netns", h.netns)
		mustRun(t, "ip", "link", "set", lk+"p", "master", labBr, "up")
		h.must("network", "create", "lab", "--subnet", l.subnet, "--nat=false", "--uplink", lk)
		h.must("storage", "pool", "create", "sh", "shared", "--source", l.shared)
		l.hosts, l.mgmt = append(l.hosts, h), append(l.mgmt, mg)
	}
	for i, a := range l.hosts {
		for j, b := range l.hosts {
			if i != j {
				token := strings.TrimSpace(b.must("trust", "add", hostName(i)))
				a.must("remote", "add", hostName(j), fmt.Sprintf("https://198.18.%d.%d:8443", n3, j+1), "--token", token)
			}
		}
	}
	return l
}

// cut takes host i's management link down (or up again).
func (l *lab) cut(i int, down bool) {
	state := "up"
	if down {
		state = "down"
	}
	mustRun(l.t, "ip", "-n", l.hosts[i].netns, "link", "set", l.mgmt[i], state)
}

// ctWorkload is an in-memory counter printed on the console every 100 ms and a TCP echo server.
const ctWorkload = `(i=0; while :; do i=$((i+1)); echo "count $i" > /dev/console; sleep 0.1; done) </dev/null >/dev/null 2>&1 &
nc -ll -p 7000 -e cat </dev/null >/dev/null 2>&1 &`

// launchContainer starts a busybox container on the lab network of h with the workload running,
// and a client connection to its echo server.
func launchContainer(t *testing.T, h *daemonHarness, name string, extra ...string) (*containertest.EchoClient, string) {
	t.Helper()
	h.must(append([]string{"launch", "busybox", name, "-d", "eth0,type=nic,network=lab"}, extra...)...)
	ip := waitAddress(t, h, name)
	h.must("exec", name, "--", "sh", "-c", ctWorkload)
	echo, err := containertest.DialEcho(ip+":7000", 100*time.Millisecond, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(echo.Close)
	if err := echo.WaitEcho(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	return echo, ip
}

// waitAddress waits until the instance has the address tandem leased it (by DHCP).
func waitAddress(t *testing.T, h *daemonHarness, name string) string {
	t.Helper()
	want := ipOf(t, h, name)
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, errOut, _ := h.tandem("exec", name, "--", "ip", "-4", "addr", "show", "eth0")
		if strings.Contains(out, want+"/") {
			return want
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(h.dir, "networks", "lab", "dnsmasq.log"))
			t.Fatalf("%s never got %s by DHCP: %s%s\ndnsmasq log:\n%s", name, want, out, errOut, log)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// consoleTap follows an instance's console through the CLI until the connection ends (the
// instance left the host): what the source printed last.
type consoleTap struct {
	mu  sync.Mutex
	buf bytes.Buffer
	cmd *exec.Cmd
}

func (c *consoleTap) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func (c *consoleTap) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func tapConsole(t *testing.T, h *daemonHarness, name string) *consoleTap {
	t.Helper()
	c := &consoleTap{}
	c.cmd = exec.Command(filepath.Join(binaries(t), "tandem"), "--dir", h.dir, "console", name)
	c.cmd.Stdout = c
	stdin, _ := c.cmd.StdinPipe()
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); c.cmd.Process.Kill(); c.cmd.Wait() })
	return c
}

func numbers(re *regexp.Regexp, text string) []int {
	var n []int
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.Atoi(m[1])
		n = append(n, v)
	}
	return n
}

var (
	ctCountRE = regexp.MustCompile(`count (\d+)`)
	vmTickRE  = regexp.MustCompile(`tick (\d+)`)
)

// checkContinues checks that the counter printed on `on` after the move carries on from the last
// value the source printed (the line written at the freeze may sit unread in the source's pty),
// with no gap.
func checkContinues(t *testing.T, on *daemonHarness, name string, re *regexp.Regexp, before []int) {
	t.Helper()
	var after []int
	deadline := time.Now().Add(30 * time.Second)
	for len(after) < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("the counter does not run after the move: %d lines", len(after))
		}
		time.Sleep(500 * time.Millisecond)
		log, _, _ := on.tandem("console", name, "--show-log")
		after = numbers(re, log)
	}
	if len(before) == 0 {
		t.Fatal("no counter lines from the source")
	}
	last, first := before[len(before)-1], after[0]
	if first < last-1 || first > last+2 {
		t.Errorf("counter at %d on the source, %d first after the move: it did not carry on", last, first)
	}
	for i := 1; i < len(after); i++ {
		if after[i] != after[i-1]+1 {
			t.Errorf("counter jumps from %d to %d after the move", after[i-1], after[i])
			break
		}
	}
	t.Logf("counter: %d last on the source, %d first after the move", last, first)
}

// checkArrived checks the instance runs on h with the MAC and address it had.
func checkArrived(t *testing.T, h *daemonHarness, name string, nics []api.NIC) {
	t.Helper()
	var inst api.Instance
	if err := json.Unmarshal([]byte(h.must("info", name, "--format", "json")), &inst); err != nil {
		t.Fatal(err)
	}
	if inst.Status != api.StatusRunning {
		t.Fatalf("%s is %s after the move", name, inst.Status)
	}
	if len(inst.NICs) != 1 || inst.NICs[0].MAC != nics[0].MAC || inst.NICs[0].IPv4 != nics[0].IPv4 {
		t.Fatalf("NICs after the move %+v, before %+v", inst.NICs, nics)
	}
}

// checkRootOnDefaultPool checks that an instance whose root was copied here has it on this
// host's default pool, like one created here.
func checkRootOnDefaultPool(t *testing.T, h *daemonHarness, kind, name string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(h.dir, "storage", "pools", "default", "volumes", kind, name)); err != nil {
		t.Errorf("%s's root is not on the default pool of its new host: %v", name, err)
	}
}

func nicsOf(t *testing.T, h *daemonHarness, name string) []api.NIC {
	t.Helper()
	var inst api.Instance
	if err := json.Unmarshal([]byte(h.must("info", name, "--format", "json")), &inst); err != nil {
		t.Fatal(err)
	}
	return inst.NICs
}

func hasInstance(t *testing.T, h *daemonHarness, name string) bool {
	t.Helper()
	for _, i := range instances(t, h) {
		if i.Name == name {
			return true
		}
	}
	return false
}

// A busybox container with a counter and an echo connection from a client on another host moves
// live from A to B (rootfs copied) and back: the counter carries on, the connection echoes, the
// name, MAC and address are kept, and the source holds nothing of it.
func TestMoveContainerLive(t *testing.T) {
	testenv.Require(t, "checkpoint")
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	echo, _ := launchContainer(t, a, "c1", "-c", "limits.memory=128MiB")
	nics := nicsOf(t, a, "c1")

	for i, hop := range [][2]*daemonHarness{{a, b}, {b, a}} {
		from, to := hop[0], hop[1]
		target := hostName(1 - i)
		tap := tapConsole(t, from, "c1")
		time.Sleep(time.Second)
		out := from.must("move", "c1", "--target", target, "--live")
		t.Logf("%s", strings.TrimSpace(out))
		for _, line := range strings.Split(from.log.String(), "\n") {
			if strings.Contains(line, "container moved") {
				t.Log(line)
			}
		}
		if !strings.Contains(out, "frozen") {
			t.Errorf("the move did not report its freeze: %q", out)
		}
		if hasInstance(t, from, "c1") {
			t.Fatalf("the source still lists c1 after the move")
		}
		checkArrived(t, to, "c1", nics)
		checkRootOnDefaultPool(t, to, "container", "c1")
		if err := echo.WaitEcho(20 * time.Second); err != nil {
			t.Fatalf("the connection does not echo after the move: %v", err)
		}
		if err := echo.Check(); err != nil {
			t.Error(err)
		}
		checkContinues(t, to, "c1", ctCountRE, numbers(ctCountRE, tap.String()))
		t.Logf("longest echo gap so far %v", echo.MaxGap().Round(time.Millisecond))
	}
	// The image went with the first move: B has it now.
	var imgs []api.Image
	json.Unmarshal([]byte(b.must("image", "list", "--format", "json")), &imgs)
	if len(imgs) != 1 {
		t.Errorf("B has %d images after receiving c1, want the one c1 came from", len(imgs))
	}

	// On the shared pool: nothing of the root is copied, the destination mounts the same disk.
	echo2, _ := launchContainer(t, a, "c2", "--storage", "sh", "-c", "limits.disk=64MiB")
	nics2 := nicsOf(t, a, "c2")
	tap := tapConsole(t, a, "c2")
	time.Sleep(time.Second)
	out := a.must("move", "c2", "--target", "host-b", "--live")
	t.Logf("%s", strings.TrimSpace(out))
	if !strings.Contains(out, "live-shared") {
		t.Errorf("the move of a container on the shared pool was not a shared one: %q", out)
	}
	checkArrived(t, b, "c2", nics2)
	if err := echo2.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("c2's connection does not echo after the move: %v", err)
	}
	checkContinues(t, b, "c2", ctCountRE, numbers(ctCountRE, tap.String()))
	b.must("exec", "c2", "--", "sh", "-c", "echo on-b > /root/shared-marker")
	b.must("delete", "--force", "c2")

	// Cold: a stopped container moves with a file written in it, and boots on B with its address.
	a.must("exec", "c1", "--", "sh", "-c", "echo kept > /root/marker")
	a.must("stop", "c1")
	t.Logf("%s", strings.TrimSpace(a.must("move", "c1", "--target", "host-b")))
	if hasInstance(t, a, "c1") {
		t.Fatal("A still lists c1 after the cold move")
	}
	assertStatus(t, b, "c1", api.StatusStopped)
	b.must("start", "c1")
	if ip := waitAddress(t, b, "c1"); ip != nics[0].IPv4 {
		t.Errorf("address after the cold move %s, want %s", ip, nics[0].IPv4)
	}
	if out := b.must("exec", "c1", "--", "cat", "/root/marker"); out != "kept\n" {
		t.Errorf("the file written before the cold move reads %q", out)
	}
}

// vmCounter prints a tick on the console every 100 ms and appends it to a file on the root disk.
const vmCounter = `i=0; while :; do echo tick $i > /dev/console; echo $i >> /root/ticks; ` +
	`[ $((i % 5)) = 0 ] && sync; i=$((i+1)); usleep 100000; done </dev/null >/dev/null 2>&1 &`

func launchVM(t *testing.T, h *daemonHarness, name string, extra ...string) {
	t.Helper()
	h.must(append([]string{"launch", "busybox", name, "--vm", "-c", "limits.memory=256MiB", "-d", "eth0,type=nic,network=lab"}, extra...)...)
	waitAgent(t, h, name)
	h.must("exec", name, "--", "sh", "-c", vmCounter)
}

// A VM whose console prints a counter moves live, with its disk on a local pool (mirrored) and on
// the shared pool (not copied): the counter carries on, the guest answers on its address from
// the client on another host, the move reports QEMU's downtime.
func TestMoveVMLive(t *testing.T) {
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"vlocal", nil},
		{"vshared", []string{"--storage", "sh"}},
	} {
		func() {
			launchVM(t, a, tc.name, tc.extra...)
			ip := waitAddress(t, a, tc.name)
			nics := nicsOf(t, a, tc.name)
			time.Sleep(time.Second)
			stopWatching := watchMoveProgress(t, a)
			out := a.must("move", tc.name, "--target", "host-b", "--live")
			t.Logf("%s", strings.TrimSpace(out))
			checkMoveProgress(t, stopWatching(), tc.extra == nil)
			if !strings.Contains(out, "downtime") {
				t.Errorf("the move did not report QEMU's downtime: %q", out)
			}
			if hasInstance(t, a, tc.name) {
				t.Fatal("A still lists the VM")
			}
			checkArrived(t, b, tc.name, nics)
			if tc.extra == nil {
				checkRootOnDefaultPool(t, b, "vm", tc.name)
			}
			// The ticks go on where they were: the file on the disk has no restart.
			ticks, _, err := b.tandem("exec", tc.name, "--", "sh", "-c", "sleep 1; tail -n 20 /root/ticks")
			if err != nil {
				t.Fatal(err)
			}
			n := numbers(regexp.MustCompile(`(\d+)`), ticks)
			for i := 1; i < len(n); i++ {
				if n[i] != n[i-1]+1 {
					t.Errorf("ticks on the disk jump: %v", n)
					break
				}
			}
			if len(n) == 0 || n[len(n)-1] < 20 {
				t.Errorf("the counter restarted: %v", n)
			}
			if out, err := exec.Command("busybox", "ping", "-c", "1", "-W", "5", ip).CombinedOutput(); err != nil {
				t.Errorf("the client cannot reach the VM at %s after the move: %v %s", ip, err, out)
			}
			b.must("delete", "--force", tc.name)
		}()
	}
}

// waitMoveStep waits until the source's move operation reports a message containing step, and
// returns the operation's id.
func waitMoveStep(t *testing.T, h *daemonHarness, step string) string {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		var ops []api.Operation
		json.Unmarshal([]byte(h.must("operation", "list", "--format", "json")), &ops)
		for _, op := range ops {
			if op.Status == api.OpRunning && strings.Contains(op.Description, "oving") && strings.Contains(op.Progress.Message, step) {
				return op.ID
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no move reached %q", step)
	return ""
}

// runMove runs a move in the background; the result arrives on the channel.
func runMove(h *daemonHarness, args ...string) <-chan error {
	done := make(chan error, 1)
	go func() {
		out, errOut, err := h.tandem(append([]string{"move"}, args...)...)
		if err != nil {
			err = fmt.Errorf("%v: %s%s", err, out, errOut)
		}
		done <- err
	}()
	return done
}

// moveFailed waits for a background move that must fail, within limit.
func moveFailed(t *testing.T, done <-chan error, limit time.Duration, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("%s: the move succeeded", what)
		}
		t.Logf("%s: %v", what, err)
	case <-time.After(limit):
		t.Fatalf("%s: the move did not end within %v", what, limit)
	}
}

// waitGone waits until h holds nothing of the instance.
func waitGone(t *testing.T, h *daemonHarness, name string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for hasInstance(t, h, name) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %s after %v", h.dir, name, within)
		}
		time.Sleep(time.Second)
	}
}

// Moves that must be refused, and moves whose destination dies or whose link is cut half-way: the
// instance carries on at the source, and the destination holds nothing of it after its restart.
func TestMoveFailures(t *testing.T) {
	testenv.Require(t, "checkpoint") // most of its moves are live container moves
	l := newLab(t, 2)
	a, b := l.hosts[0], l.hosts[1]
	a.must("image", "build", "busybox")
	echo, _ := launchContainer(t, a, "c1")
	// Data the destination's copy of the image lacks, so that a capped rootfs copy takes a while.
	a.must("exec", "c1", "--", "dd", "if=/dev/urandom", "of=/root/big", "bs=64k", "count=32")

	// Refused up front, nothing touched.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"c1", "--target", "nowhere", "--live"}, "unknown remote"},
		{[]string{"c1", "--target", "host-b"}, "stop it first"},
		{[]string{"nope", "--target", "host-b", "--live"}, "not found"},
		{[]string{"c1", "--target", "host-b", "--live", "--bandwidth", "-5"}, "bandwidth"},
	} {
		if _, errOut, err := a.tandem(append([]string{"move"}, tc.args...)...); err == nil || !strings.Contains(errOut, tc.want) {
			t.Errorf("move %v: %v %q, want an error saying %q", tc.args, err, errOut, tc.want)
		}
	}

	// Cancelled half-way: the container runs on, B drops its half at once.
	done := runMove(a, "c1", "--target", "host-b", "--live", "--bandwidth", "64KiB")
	a.must("operation", "cancel", waitMoveStep(t, a, "copying the root filesystem"))
	if err := <-done; err == nil {
		t.Fatal("a cancelled move succeeded")
	}
	assertStatus(t, a, "c1", api.StatusRunning)
	waitGone(t, b, "c1", 20*time.Second)

	// The destination daemon dies while the rootfs is copied (slowly, to catch it half-way).
	done = runMove(a, "c1", "--target", "host-b", "--live", "--bandwidth", "64KiB")
	waitMoveStep(t, a, "copying the root filesystem")
	if _, errOut, err := a.tandem("stop", "c1"); err == nil || !strings.Contains(errOut, "busy") {
		t.Errorf("stop during a move: %v %q, want busy", err, errOut)
	}
	b.stop(9)
	moveFailed(t, done, 2*time.Minute, "move with the destination killed")
	assertStatus(t, a, "c1", api.StatusRunning)
	if err := echo.WaitEcho(10 * time.Second); err != nil {
		t.Fatalf("the connection broke: %v", err)
	}
	b.start()
	if hasInstance(t, b, "c1") {
		t.Error("B holds c1 after its restart")
	}
	if left, _ := filepath.Glob(filepath.Join(b.dir, "containers", "*", "*")); len(left) > 0 {
		t.Errorf("B's container driver holds %v", left)
	}

	// The link is cut during a VM's disk mirror: A gives up (stalled link), the guest runs on;
	// B drops its half when it hears nothing.
	launchVM(t, a, "v1")
	done = runMove(a, "v1", "--target", "host-b", "--live", "--bandwidth", "1MiB")
	waitMoveStep(t, a, "mirroring the disk")
	l.cut(0, true)
	moveFailed(t, done, 3*time.Minute, "move over a cut link")
	l.cut(0, false)
	assertStatus(t, a, "v1", api.StatusRunning)
	before, _, _ := a.tandem("console", "v1", "--show-log")
	time.Sleep(2 * time.Second)
	after, _, _ := a.tandem("console", "v1", "--show-log")
	if nb, na := numbers(vmTickRE, before), numbers(vmTickRE, after); len(na) <= len(nb) {
		t.Errorf("the VM's counter stopped on A: %d ticks, then %d", len(nb), len(na))
	}
	waitGone(t, b, "v1", 2*time.Minute)

	// The link is cut while a container's rootfs is copied: it runs on at A, B drops its half.
	done = runMove(a, "c1", "--target", "host-b", "--live", "--bandwidth", "64KiB")
	waitMoveStep(t, a, "copying the root filesystem")
	l.cut(0, true)
	moveFailed(t, done, 2*time.Minute, "container move over a cut link")
	l.cut(0, false)
	assertStatus(t, a, "c1", api.StatusRunning)
	if err := echo.WaitEcho(10 * time.Second); err != nil {
		t.Fatalf("the connection broke: %v", err)
	}
	waitGone(t, b, "c1", 2*time.Minute)

	// B's daemon dies during the VM's disk mirror: the guest runs on at A, B holds nothing after
	// its restart.
	done = runMove(a, "v1", "--target", "host-b", "--live", "--bandwidth", "2MiB")
	waitMoveStep(t, a, "mirroring the disk")
	b.stop(9)
	moveFailed(t, done, 2*time.Minute, "VM move with the destination killed")
	assertStatus(t, a, "v1", api.StatusRunning)
	a.must("exec", "v1", "--", "true")
	b.start()
	if hasInstance(t, b, "v1") {
		t.Error("B holds v1 after its restart")
	}
	if out, _ := exec.Command("pgrep", "-f", "qemu-system.*"+b.dir).Output(); len(out) > 0 {
		t.Errorf("a QEMU of B's is left: %s", out)
	}

	// B's daemon dies while a stopped VM's disk is sent (a cold move): v1 stays A's, stopped; B
	// holds nothing, not even the root it had made, after its restart.
	a.must("stop", "v1", "--force")
	done = runMove(a, "v1", "--target", "host-b", "--bandwidth", "512KiB")
	waitMoveStep(t, a, "copying the disk")
	b.stop(9)
	moveFailed(t, done, 2*time.Minute, "cold VM move with the destination killed")
	assertStatus(t, a, "v1", api.StatusStopped)
	b.start()
	if hasInstance(t, b, "v1") {
		t.Error("B holds v1 after its restart")
	}
	for _, kind := range []string{"container", "vm"} {
		if left, _ := filepath.Glob(filepath.Join(b.dir, "storage", "pools", "default", "volumes", kind, "*")); len(left) > 0 {
			t.Errorf("B's pool holds %v after the failed moves", left)
		}
	}

	// Nothing is stuck: the same moves now go through.
	a.must("move", "c1", "--target", "host-b", "--live")
	if err := echo.WaitEcho(20 * time.Second); err != nil {
		t.Fatalf("no echo after the retried move: %v", err)
	}
	checkArrived(t, b, "c1", nicsOf(t, b, "c1"))
}
