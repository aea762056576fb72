package system

// Live migration of a container between two container drivers on this machine (two "hosts":
// their own Dir, RunDir and cgroup parent, the same id range settings), through the driver's
// migration primitives; the integrator's `tandem move` will run the same sequence over the wire.
// A busybox container keeps an in-memory counter (printed to its console every 100 ms) and runs
// a TCP echo server; a client on the test bridge keeps one connection open and sends a line every
// 100 ms. Needs root, runc, busybox-static, CRIU and dnsmasq; skips with the reason otherwise.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container"
	"tandem/internal/driver/container/containertest"
	"tandem/internal/testenv"
)

// migEnv is two drivers ("host A" and "host B") sharing an image, a bridge and DHCP.
type migEnv struct {
	t          *testing.T
	a, b       *container.Driver
	optsA      container.Options
	optsB      container.Options
	base       string
	net        *containertest.Net
	echoClient *containertest.EchoClient
}

func newMigEnv(t *testing.T) *migEnv {
	t.Helper()
	e := newCtEnv(t) // builds the busybox image; its own driver is unused
	testenv.Require(t, "checkpoint", "dnsmasq", "nsenter", "iproute2")
	m := &migEnv{t: t, base: e.base}
	var err error
	if m.net, err = containertest.NewNet(e.base); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.net.Close)
	for i, o := range []*container.Options{&m.optsA, &m.optsB} {
		*o = e.opts
		host := string(rune('a' + i))
		o.Dir, o.RunDir = filepath.Join(e.base, "c"+host), filepath.Join(e.base, "r"+host)
		o.CgroupParent = e.opts.CgroupParent + "-" + host
		o.PrepareNetwork = m.net.PrepareNetwork
		parent := o.CgroupParent
		t.Cleanup(func() {
			for _, cg := range cgroupDirs(parent) {
				os.Remove(cg)
			}
		})
	}
	if m.a, err = container.New(m.optsA); err != nil {
		t.Fatal(err)
	}
	if m.b, err = container.New(m.optsB); err != nil {
		t.Fatal(err)
	}
	return m
}

// launch boots a container on A that gets its address by DHCP, starts the counter and the echo
// server, and connects the client.
func (m *migEnv) launch(name string, config map[string]string) *driver.Handle {
	t := m.t
	t.Helper()
	ctx := testenv.Context(t, 2*time.Minute)
	if config == nil {
		config = map[string]string{}
	}
	spec := &driver.Spec{ID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()), Name: name, Type: "container", Image: "busybox", Config: config}
	if err := m.net.StartDHCP(spec.ID); err != nil {
		t.Fatal(err)
	}
	h, err := m.a.Create(ctx, spec)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { m.forget(h) })
	if err := m.a.Start(ctx, h); err != nil {
		t.Fatalf("start: %v", err)
	}
	addr := m.net.Addr(h.ID)
	waitFor(t, 30*time.Second, "a DHCP lease for "+addr, func() bool {
		out, _ := m.sh(m.a, h, "ip -4 -o addr show dev eth0")
		return strings.Contains(out, " "+addr+"/24 ")
	})
	m.sh(m.a, h, `grep -q ' /tmp tmpfs' /proc/mounts || mount -t tmpfs tmpfs /tmp
(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; echo "count $i" > /dev/console; sleep 0.1; done) </dev/null >/dev/null 2>&1 &
nc -ll -p 7000 -e cat </dev/null >/dev/null 2>&1 &`)
	if m.echoClient, err = containertest.DialEcho(addr+":7000", 100*time.Millisecond, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.echoClient.Close)
	if err := m.echoClient.WaitEcho(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // some counter lines on A's console
	return h
}

// forget stops and deletes the container on both hosts, whatever state the test left.
func (m *migEnv) forget(h *driver.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // also from cleanups: not the test's context
	defer cancel()
	for _, d := range []*container.Driver{m.a, m.b} {
		d.AbortDump(ctx, h)
		d.Stop(ctx, h, driver.StopOpts{Force: true})
		if err := d.Delete(ctx, h); err != nil {
			d.CommitDump(ctx, h)
			d.Release(ctx, h, container.ReleaseOpts{})
		}
	}
}

func (m *migEnv) sh(d *container.Driver, h *driver.Handle, script string) (string, int) {
	m.t.Helper()
	ctx := testenv.Context(m.t, time.Minute)
	var out bytes.Buffer
	code, err := d.Exec(ctx, h, container.ExecRequest{Cmd: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &out})
	if err != nil {
		m.t.Fatalf("exec %q: %v", script, err)
	}
	return out.String(), code
}

// keepLogs copies CRIU's logs to $TANDEM_TEST_KEEP_LOGS, if set, for a look at where the time goes.
func keepLogs(t *testing.T, files ...string) {
	dir := os.Getenv("TANDEM_TEST_KEEP_LOGS")
	if dir == "" {
		return
	}
	os.MkdirAll(dir, 0o755)
	for _, f := range files {
		if data, err := os.ReadFile(f); err == nil {
			os.WriteFile(filepath.Join(dir, t.Name()+"-"+filepath.Base(f)), data, 0o644)
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
	}
}

var countRE = regexp.MustCompile(`count (\d+)`)

// counts returns the counter values in a driver's console log of h.
func counts(t *testing.T, d *container.Driver, h *driver.Handle) []int {
	var n []int
	for _, m := range countRE.FindAllStringSubmatch(readConsoleLog(t, d, h), -1) {
		v, _ := strconv.Atoi(m[1])
		n = append(n, v)
	}
	return n
}

// checkCarriesOn checks that the counter and the connection continue on `on` after the move
// (before: the counter values the source printed) and returns the longest echo gap.
func (m *migEnv) checkCarriesOn(on *container.Driver, h *driver.Handle, before []int) {
	t := m.t
	t.Helper()
	if st, err := on.State(testenv.Context(t, 5*time.Minute), h); err != nil || st != driver.StatusRunning {
		t.Fatalf("state after the move: %s %v", st, err)
	}
	if err := m.echoClient.WaitEcho(15 * time.Second); err != nil {
		t.Fatalf("the connection does not echo after the move: %v", err)
	}
	if err := m.echoClient.Check(); err != nil {
		t.Error(err)
	}
	time.Sleep(time.Second)
	after := counts(t, on, h)
	if on == m.a { // a resumed source: its log holds both parts
		after = after[len(before):]
	}
	if len(before) == 0 || len(after) < 5 {
		t.Fatalf("counter lines: %d before, %d after", len(before), len(after))
	}
	last, first := before[len(before)-1], after[0]
	// The line written just before the freeze may sit in the pty, unread by the source's shim.
	if first < last-1 || first > last+2 {
		t.Errorf("counter %d before the move, %d after: it did not carry on", last, first)
	}
	for i := 1; i < len(after); i++ {
		if after[i] != after[i-1]+1 {
			t.Errorf("counter jumps from %d to %d after the move", after[i-1], after[i])
			break
		}
	}
	t.Logf("counter: %d printed before the move, %d first after it, %d lines after", last, first, len(after))
	out, _ := m.sh(on, h, "cat /tmp/count")
	if v, _ := strconv.Atoi(strings.TrimSpace(out)); v < after[len(after)-1] {
		t.Errorf("/tmp/count %q behind the console's %d", out, after[len(after)-1])
	}
}

// checkHoldsNothing checks that a driver has no trace of any container left.
func checkHoldsNothing(t *testing.T, o container.Options, what string) {
	t.Helper()
	entries, _ := os.ReadDir(o.Dir)
	for _, e := range entries {
		if e.Name() != "idmap.json" && !strings.HasPrefix(e.Name(), "lxcfs.") {
			t.Errorf("%s: %s left in %s", what, e.Name(), o.Dir)
		}
	}
	if data, _ := os.ReadFile(filepath.Join(o.Dir, "idmap.json")); bytes.Contains(data, []byte(`"slots": {`)) &&
		!bytes.Contains(data, []byte(`"slots": {}`)) {
		t.Errorf("%s: id ranges left: %s", what, data)
	}
	runDir, _ := os.ReadDir(o.RunDir)
	for _, e := range runDir {
		if e.Name() != "runc" {
			t.Errorf("%s: run directory %s left", what, e.Name())
		}
	}
	if states, _ := os.ReadDir(filepath.Join(o.RunDir, "runc")); len(states) > 0 {
		t.Errorf("%s: runc state left", what)
	}
	for _, cg := range cgroupDirs(o.CgroupParent) {
		entries, _ := os.ReadDir(cg)
		for _, e := range entries {
			if e.IsDir() {
				t.Errorf("%s: cgroup %s/%s left", what, cg, e.Name())
			}
		}
	}
}

// move runs the live move of h from A to B: dump on A, adopt and restore on B, commit and
// release on A. shared: B uses A's rootfs directory in place (a shared pool); otherwise B gets
// a copy (a local pool).
func (m *migEnv) move(h *driver.Handle, shared bool) {
	t := m.t
	ctx := testenv.Context(t, 2*time.Minute)
	images := filepath.Join(m.base, "move-"+h.ID) // on the "shared" storage both hosts see
	src := m.a.RootfsPath(h)
	start := time.Now()
	ds, err := m.a.Dump(ctx, h, container.DumpOpts{Dir: images, TCPEstablished: true})
	if err != nil {
		t.Fatalf("dump on A: %v", err)
	}
	before := counts(t, m.a, h)
	handle := *h // what the integrator sends: the persisted handle
	adopt := container.AdoptOpts{}
	if shared {
		adopt.Rootfs = src
	}
	if err := m.b.Adopt(ctx, &handle, adopt); err != nil {
		t.Fatalf("adopt on B: %v", err)
	}
	copyStart := time.Now()
	if !shared {
		if err := container.CopyRootfs(ctx, src, m.b.RootfsPath(&handle)); err != nil {
			t.Fatalf("copy the rootfs: %v", err)
		}
	}
	copied := time.Since(copyStart)
	garps, err := containertest.WatchGARP(m.net.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	defer garps.Close()
	rs, err := m.b.Restore(ctx, &handle, container.RestoreOpts{Dir: images})
	if err != nil {
		t.Fatalf("restore on B: %v", err)
	}
	freeze := time.Since(start)
	keepLogs(t, filepath.Join(m.optsA.Dir, h.ID, "criu", "dump.log"), filepath.Join(m.optsB.Dir, h.ID, "criu", "restore.log"))
	if err := m.a.CommitDump(ctx, h); err != nil {
		t.Fatalf("commit on A: %v", err)
	}
	if err := m.a.Start(ctx, h); err == nil {
		t.Error("A started a container that was committed to B")
	}
	if err := m.a.Release(ctx, h, container.ReleaseOpts{KeepRootfs: shared}); err != nil {
		t.Fatalf("release on A: %v", err)
	}
	*h = handle
	m.checkCarriesOn(m.b, h, before)
	// B announced the container (3 rounds, 100 ms apart, the first before Restore returned).
	if n := garps.Count(m.net.MAC(h.ID), m.net.Addr(h.ID)); n != 3 {
		t.Errorf("%d gratuitous ARPs from %s %s after the restore, want 3", n, m.net.MAC(h.ID), m.net.Addr(h.ID))
	}
	if shared {
		if _, err := os.Stat(src); err != nil {
			t.Errorf("A's release removed the shared rootfs: %v", err)
		}
		os.RemoveAll(filepath.Dir(src)) // the bundle dir left around it: the "pool"'s business
	}
	checkHoldsNothing(t, m.optsA, "host A after the move")
	t.Logf("freeze %v (dump %v, %d KiB of images; rootfs copy %v; restore %v); longest echo gap %v",
		freeze.Round(time.Millisecond), ds.Dumped.Round(time.Millisecond), ds.Size>>10, copied.Round(time.Millisecond),
		rs.Restored.Round(time.Millisecond), m.echoClient.MaxGap().Round(time.Millisecond))
}

// Shared pool: the destination uses the source's rootfs directory in place.
func TestContainerMigrateShared(t *testing.T) {
	m := newMigEnv(t)
	h := m.launch("mig1", nil)
	m.move(h, true)
}

// Local pool: the destination gets a copy of the rootfs.
func TestContainerMigrateLocal(t *testing.T) {
	m := newMigEnv(t)
	h := m.launch("mig2", nil)
	m.move(h, false)
}

// The restore on B fails (a corrupt image): A resumes with its counter and connection, and B
// holds nothing of it.
func TestContainerMigrateFailure(t *testing.T) {
	m := newMigEnv(t)
	h := m.launch("mig3", nil)
	ctx := testenv.Context(t, 2*time.Minute)
	images := filepath.Join(m.base, "move-a")
	if _, err := m.a.Dump(ctx, h, container.DumpOpts{Dir: images, TCPEstablished: true}); err != nil {
		t.Fatalf("dump: %v", err)
	}
	before := counts(t, m.a, h)
	copyB := filepath.Join(m.base, "move-b") // the transfer to B, which arrives damaged
	corrupt(t, images, copyB)
	handle := *h
	if err := m.b.Adopt(ctx, &handle, container.AdoptOpts{Rootfs: m.a.RootfsPath(h)}); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	_, err := m.b.Restore(ctx, &handle, container.RestoreOpts{Dir: copyB})
	if err == nil {
		t.Fatal("restore of a corrupt image succeeded")
	}
	t.Logf("restore on B failed as it should: %v", err)
	if st, _ := m.b.State(ctx, &handle); st == driver.StatusRunning {
		t.Fatal("B runs the container after a failed restore")
	}
	if err := m.b.Delete(ctx, &handle); err != nil { // the integrator's revert of Adopt
		t.Fatalf("delete on B: %v", err)
	}
	checkHoldsNothing(t, m.optsB, "host B after the failed restore")
	if _, err := os.Stat(m.a.RootfsPath(h)); err != nil {
		t.Fatalf("B's delete touched the shared rootfs: %v", err)
	}
	start := time.Now()
	if err := m.a.AbortDump(ctx, h); err != nil {
		t.Fatalf("abort on A: %v", err)
	}
	t.Logf("A resumed in %v", time.Since(start).Round(time.Millisecond))
	m.checkCarriesOn(m.a, h, before)
}

// lazyConfig readies this host for lazy migration (or skips) and returns the container config:
// CRIU's page server needs a 4 MiB pipe, and these hosts drop CAP_SYS_RESOURCE, so the pipe size
// limit is raised for the test (an operator sets it once; MigrationFeatures says so); a user
// namespace's tasks may only open a userfaultfd with vm.unprivileged_userfaultfd=1, so without it
// the container is privileged.
func (m *migEnv) lazyConfig() map[string]string {
	t := m.t
	const pipeMax = "/proc/sys/fs/pipe-max-size"
	if old, err := os.ReadFile(pipeMax); err == nil {
		if n, _ := strconv.Atoi(strings.TrimSpace(string(old))); n < 4<<20 {
			if err := os.WriteFile(pipeMax, []byte("4194304"), 0o644); err != nil {
				testenv.Unsupported(t, "cannot raise %s: %v", pipeMax, err)
			}
			t.Cleanup(func() { os.WriteFile(pipeMax, old, 0o644) })
		}
	}
	f := m.b.MigrationFeatures(testenv.Context(t, 5*time.Minute))
	if !f.LazyPages || !f.LazyDump {
		testenv.Unsupported(t, "no lazy migration here: %v", f.Notes)
	}
	if !f.LazyUnprivileged {
		t.Logf("vm.unprivileged_userfaultfd=0: lazy restore needs a privileged container")
		return map[string]string{"security.privileged": "true"}
	}
	return nil
}

// Lazy (post-copy) migration: memory stays in the frozen source and is pulled through a page
// server on 127.0.0.1 while the container already runs on B.
func TestContainerMigrateLazy(t *testing.T) {
	m := newMigEnv(t)
	h := m.launch("lazy1", m.lazyConfig())
	ctx := testenv.Context(t, time.Minute)
	images := filepath.Join(m.base, "move-lazy")
	ps := "127.0.0.1:" + freeTCPPort(t)
	start := time.Now()
	ds, err := m.a.Dump(ctx, h, container.DumpOpts{Dir: images, TCPEstablished: true, Lazy: true, PageServerAddr: ps})
	if err != nil {
		t.Fatalf("lazy dump on A: %v", err)
	}
	before := counts(t, m.a, h)
	handle := *h
	if err := m.b.Adopt(ctx, &handle, container.AdoptOpts{Rootfs: m.a.RootfsPath(h)}); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	rs, err := m.b.Restore(ctx, &handle, container.RestoreOpts{Dir: images, Lazy: true, PageServerAddr: ps})
	if err != nil {
		m.a.AbortDump(testenv.Context(t, 5*time.Minute), h)
		t.Fatalf("lazy restore on B: %v", err)
	}
	freeze := time.Since(start)
	commitStart := time.Now()
	if err := m.a.CommitDump(ctx, h); err != nil {
		t.Fatalf("commit on A: %v", err)
	}
	select {
	case err := <-rs.LazyDone:
		if err != nil {
			t.Errorf("lazy pages: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the lazy-pages daemon did not finish")
	}
	transfer := time.Since(commitStart)
	if err := m.a.Release(ctx, h, container.ReleaseOpts{KeepRootfs: true}); err != nil {
		t.Fatalf("release on A: %v", err)
	}
	*h = handle
	m.checkCarriesOn(m.b, h, before)
	t.Logf("lazy: freeze %v (dump without memory %v, %d KiB of images; restore %v); rest of the pages in %v; longest echo gap %v",
		freeze.Round(time.Millisecond), ds.Dumped.Round(time.Millisecond), ds.Size>>10, rs.Restored.Round(time.Millisecond),
		transfer.Round(time.Millisecond), m.echoClient.MaxGap().Round(time.Millisecond))
}

// A lazy restore on B that fails: A, frozen with the memory, resumes on AbortDump.
func TestContainerMigrateLazyAbort(t *testing.T) {
	m := newMigEnv(t)
	h := m.launch("lazy2", m.lazyConfig())
	ctx := testenv.Context(t, time.Minute)
	images := filepath.Join(m.base, "move-lazy")
	ps := "127.0.0.1:" + freeTCPPort(t)
	if _, err := m.a.Dump(ctx, h, container.DumpOpts{Dir: images, TCPEstablished: true, Lazy: true, PageServerAddr: ps}); err != nil {
		t.Fatalf("lazy dump on A: %v", err)
	}
	if st, _ := m.a.State(ctx, h); st == driver.StatusStopped || st == driver.StatusGone {
		t.Fatalf("A is %s during the lazy dump, want frozen", st)
	}
	before := counts(t, m.a, h)
	handle := *h
	if err := m.b.Adopt(ctx, &handle, container.AdoptOpts{Rootfs: m.a.RootfsPath(h)}); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	corrupt(t, images, filepath.Join(m.base, "move-lazy-b"))
	if _, err := m.b.Restore(ctx, &handle, container.RestoreOpts{Dir: filepath.Join(m.base, "move-lazy-b"), Lazy: true, PageServerAddr: ps}); err == nil {
		t.Fatal("lazy restore of a corrupt image succeeded")
	}
	if err := m.b.Delete(ctx, &handle); err != nil {
		t.Fatalf("delete on B: %v", err)
	}
	checkHoldsNothing(t, m.optsB, "host B after the failed lazy restore")
	if err := m.a.AbortDump(ctx, h); err != nil {
		t.Fatalf("abort on A: %v", err)
	}
	m.checkCarriesOn(m.a, h, before)
}

// corrupt copies the image directory src to dst (the transfer to B) and damages its first core
// image.
func corrupt(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	cores, _ := filepath.Glob(filepath.Join(dst, "core-*.img"))
	if len(cores) == 0 {
		t.Fatal("no core image in the dump")
	}
	if err := os.WriteFile(cores[0], bytes.Repeat([]byte{0xff}, 64), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freeTCPPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// The link to the source's page server is cut (it never answers): B's lazy restore runs into its
// deadline and leaves nothing running or mounted; A resumes.
func TestContainerMigrateLazyCutLink(t *testing.T) {
	m := newMigEnv(t)
	h := m.launch("lazy3", m.lazyConfig())
	ctx := testenv.Context(t, time.Minute)
	images := filepath.Join(m.base, "move-lazy")
	if _, err := m.a.Dump(ctx, h, container.DumpOpts{Dir: images, TCPEstablished: true, Lazy: true,
		PageServerAddr: "127.0.0.1:" + freeTCPPort(t)}); err != nil {
		t.Fatalf("lazy dump on A: %v", err)
	}
	before := counts(t, m.a, h)
	hole, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	handle := *h
	// A local copy of the rootfs: a shared directory would be shared by two live mount trees on
	// this one machine (A's frozen container and B's restore), which real hosts never do.
	if err := m.b.Adopt(ctx, &handle, container.AdoptOpts{}); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	if err := container.CopyRootfs(ctx, m.a.RootfsPath(h), m.b.RootfsPath(&handle)); err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	if _, err := m.b.Restore(rctx, &handle, container.RestoreOpts{Dir: images, Lazy: true, PageServerAddr: hole.Addr().String()}); err == nil {
		t.Fatal("a lazy restore without its page server succeeded")
	} else {
		t.Logf("restore on B: %v", err)
	}
	if err := m.b.Delete(ctx, &handle); err != nil {
		t.Fatalf("delete on B: %v", err)
	}
	checkHoldsNothing(t, m.optsB, "host B after the cut")
	if mounts, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mounts, []byte(m.optsB.Dir+"/")) ||
		bytes.Contains(mounts, []byte(m.optsB.RunDir+"/")) {
		t.Errorf("mounts left under B's directories")
	}
	if out, _ := exec.Command("pgrep", "-f", m.optsB.Dir).Output(); len(out) > 0 {
		t.Errorf("processes of B left: %s", out)
	}
	if err := m.a.AbortDump(ctx, h); err != nil {
		t.Fatalf("abort on A: %v", err)
	}
	m.checkCarriesOn(m.a, h, before)
}
