package system

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/driver/vm"
	"tandem/internal/driver/vm/vmtest"
	"tandem/internal/testenv"
)

// vmBootDeadline bounds a boot to the agent under TCG (about 2-4 s normally): past it the guest hung.
const vmBootDeadline = 90 * time.Second

type vmEnv struct {
	t      *testing.T
	dirs   vmtest.Dirs
	images *vmtest.Images
	d      *vm.Driver
}

func newVMEnv(t *testing.T) *vmEnv {
	testenv.Require(t, vmtest.Components...)
	e := &vmEnv{t: t, dirs: vmtest.NewDirs(t), images: vmtest.BusyboxImages(t)}
	e.d = vmtest.NewDriver(t, e.dirs, e.images)
	return e
}

// launch creates and starts a VM, deleting it at the end of the test; it returns once the guest
// agent answers, or fails saying the boot hung.
func (e *vmEnv) launch(name string, config map[string]string) (*driver.Handle, time.Duration) {
	t := e.t
	t.Helper()
	if config == nil {
		config = map[string]string{}
	}
	if config["limits.memory"] == "" {
		config["limits.memory"] = "256MiB"
	}
	spec := &driver.Spec{ID: uuid.NewString(), Name: name, Type: "vm", Image: "busybox", Config: config}
	h, err := e.d.Create(testenv.Context(e.t, 2*time.Minute), spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // the test's context has ended
		defer cancel()
		if err := e.d.Delete(ctx, h); err != nil {
			t.Errorf("Delete: %v", err)
		}
		if t.Failed() {
			log, _ := os.ReadFile(e.d.ConsoleLogPath(h))
			t.Logf("console of %s:\n%s", name, log)
		}
	})
	start := time.Now()
	if err := e.d.Start(testenv.Context(e.t, time.Minute), h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := e.d.WaitAgent(testenv.Context(e.t, vmBootDeadline), h); err != nil {
		t.Fatalf("guest hung: no agent %v after start: %v", vmBootDeadline, err)
	}
	return h, time.Since(start)
}

func (e *vmEnv) exec(h *driver.Handle, cmd ...string) (int, string, string) {
	e.t.Helper()
	var out, errb bytes.Buffer
	code, err := e.d.Exec(testenv.Context(e.t, 30*time.Second), h, vm.ExecRequest{Cmd: cmd, Stdout: &out, Stderr: &errb})
	if err != nil {
		e.t.Fatalf("exec %q: %v", cmd, err)
	}
	return code, out.String(), errb.String()
}

func (e *vmEnv) wantState(h *driver.Handle, want driver.Status) {
	e.t.Helper()
	got, err := e.d.State(testenv.Context(e.t, 30*time.Second), h)
	if err != nil || got != want {
		e.t.Fatalf("state %s (%v), want %s", got, err, want)
	}
}

// The busybox image boots under TCG; exec returns exit codes and output; the guest reports an IP;
// pause and resume work; a graceful stop reaches the guest's init.
func TestVMBootExecInfoPauseStop(t *testing.T) {
	e := newVMEnv(t)
	h, boot := e.launch("v1", nil)
	t.Logf("start to guest agent: %v (TCG, q35)", boot)

	for _, want := range []int{0, 1, 42} {
		code, out, errOut := e.exec(h, "sh", "-c", fmt.Sprintf("echo out $(uname -s); echo err >&2; exit %d", want))
		if code != want || out != "out Linux\n" || errOut != "err\n" {
			t.Errorf("exit %d stdout %q stderr %q; want %d", code, out, errOut, want)
		}
	}
	var in bytes.Buffer
	in.WriteString("through stdin\n")
	var out bytes.Buffer
	if code, err := e.d.Exec(testenv.Context(e.t, 30*time.Second), h, vm.ExecRequest{Cmd: []string{"cat"}, Stdin: &in, Stdout: &out}); err != nil || code != 0 || out.String() != "through stdin\n" {
		t.Errorf("cat: %d %q %v", code, out.String(), err)
	}

	var tty bytes.Buffer
	if code, err := e.d.Exec(testenv.Context(e.t, 30*time.Second), h, vm.ExecRequest{Cmd: []string{"sh", "-c", "tty; stty size"},
		TTY: true, Size: driver.TermSize{Rows: 40, Cols: 120}, Stdout: &tty}); err != nil || code != 0 ||
		!strings.Contains(tty.String(), "/dev/pts/") || !strings.Contains(tty.String(), "40 120") {
		t.Errorf("exec with a terminal: %d %q %v", code, tty.String(), err)
	}

	// udhcpc runs in the background at boot: give the lease a moment.
	var info vm.GuestInfo
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		info, err = e.d.GuestInfo(testenv.Context(e.t, 10*time.Second), h)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.IPs) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("guest info: %+v", info)
	if len(info.IPs) == 0 || !strings.HasPrefix(info.IPs[0], "10.0.2.") {
		t.Errorf("guest has no user-mode address: %+v", info)
	}
	if !strings.Contains(info.OS, "BusyBox") || info.Hostname == "" {
		t.Errorf("guest info %+v", info)
	}

	// Files both ways.
	payload := strings.Repeat("tandem\n", 10000)
	if err := e.d.PushFile(testenv.Context(e.t, 30*time.Second), h, "/root/pushed", strings.NewReader(payload), vm.FileOpts{Mode: 0o600}); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := e.exec(h, "sh", "-c", "wc -l < /root/pushed; stat -c %a /root/pushed"); code != 0 || out != "10000\n600\n" {
		t.Errorf("pushed file in guest: %q", out)
	}
	var pulled bytes.Buffer
	if _, err := e.d.PullFile(testenv.Context(e.t, 30*time.Second), h, "/root/pushed", &pulled); err != nil || pulled.String() != payload {
		t.Errorf("pull: %d bytes, %v", pulled.Len(), err)
	}

	p := e.d
	if err := p.Pause(testenv.Context(e.t, 10*time.Second), h); err != nil {
		t.Fatal(err)
	}
	e.wantState(h, driver.StatusPaused)
	if err := p.Resume(testenv.Context(e.t, 10*time.Second), h); err != nil {
		t.Fatal(err)
	}
	e.wantState(h, driver.StatusRunning)
	if code, out, _ := e.exec(h, "echo", "after resume"); code != 0 || out != "after resume\n" {
		t.Errorf("exec after resume: %d %q", code, out)
	}

	start := time.Now()
	if err := e.d.Stop(testenv.Context(e.t, time.Minute), h, driver.StopOpts{Timeout: 45 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop took %v", time.Since(start))
	e.wantState(h, driver.StatusStopped)
	console, _ := os.ReadFile(e.d.ConsoleLogPath(h))
	for _, want := range []string{"The system is going down NOW!", "Requesting system poweroff", "reboot: Power down"} {
		if !bytes.Contains(console, []byte(want)) {
			t.Errorf("console log lacks %q: the guest's init did not see the power button", want)
		}
	}
	if time.Since(start) > 40*time.Second {
		t.Errorf("graceful stop fell back to a forced one")
	}
}

// The serial console: attach, type a command, read its output.
func TestVMConsole(t *testing.T) {
	e := newVMEnv(t)
	h, _ := e.launch("con1", nil)
	con, err := e.d.Console(testenv.Context(e.t, 10*time.Second), h)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	if _, err := e.d.Console(testenv.Context(e.t, 10*time.Second), h); err == nil {
		t.Error("a second console attach succeeded")
	}
	got := make(chan string, 1)
	go func() {
		var buf bytes.Buffer
		b := make([]byte, 4096)
		for {
			n, err := con.Read(b)
			buf.Write(b[:n])
			if strings.Contains(buf.String(), "console-42") || err != nil {
				got <- buf.String()
				return
			}
		}
	}()
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		con.Write([]byte("echo console-$((6*7))\n"))
		select {
		case s := <-got:
			if !strings.Contains(s, "console-42") {
				t.Fatalf("console output %q", s)
			}
			return
		case <-tick.C:
		case <-deadline:
			t.Fatal("no shell answer on the console within 30 s")
		}
	}
}

// microvm boots the same image; graceful stop works through its ACPI GED power button.
func TestVMMicrovm(t *testing.T) {
	e := newVMEnv(t)
	h, boot := e.launch("micro1", map[string]string{vm.KeyMachine: "microvm"})
	t.Logf("start to guest agent: %v (TCG, microvm)", boot)
	if code, out, _ := e.exec(h, "cat", "/proc/cmdline"); code != 0 || !strings.Contains(out, "tsc_early_khz=") {
		t.Errorf("microvm cmdline %q", out)
	}
	start := time.Now()
	if err := e.d.Stop(testenv.Context(e.t, time.Minute), h, driver.StopOpts{Timeout: 30 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop took %v", time.Since(start))
	console, _ := os.ReadFile(e.d.ConsoleLogPath(h))
	if !bytes.Contains(console, []byte("reboot: Power down")) {
		t.Errorf("microvm did not power down gracefully")
	}
}

// A second driver object on the same dirs (a restarted daemon) re-attaches to a running VM and
// manages it: state, exec, stop.
func TestVMRecoverFromNewDriver(t *testing.T) {
	e := newVMEnv(t)
	h, _ := e.launch("rec1", nil)
	e.d.Close() // the old daemon is gone: its agent connection with it
	d2 := vmtest.NewDriver(t, e.dirs, e.images)
	h2 := &driver.Handle{ID: h.ID, Driver: h.Driver, Version: h.Version, DriverState: h.DriverState, Spec: h.Spec}
	if err := d2.Recover(testenv.Context(e.t, 30*time.Second), h2); err != nil {
		t.Fatal(err)
	}
	if st, err := d2.State(testenv.Context(e.t, 30*time.Second), h2); err != nil || st != driver.StatusRunning {
		t.Fatalf("state after recover %s %v", st, err)
	}
	var out bytes.Buffer
	if code, err := d2.Exec(testenv.Context(e.t, time.Minute), h2, vm.ExecRequest{Cmd: []string{"echo", "still here"}, Stdout: &out}); err != nil || code != 0 || out.String() != "still here\n" {
		t.Fatalf("exec through the new driver: %d %q %v", code, out.String(), err)
	}
	if err := d2.Stop(testenv.Context(e.t, time.Minute), h2, driver.StopOpts{Force: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := d2.State(testenv.Context(e.t, 30*time.Second), h2); st != driver.StatusStopped {
		t.Fatalf("state after stop %s", st)
	}
}

// Ten VMs created, started and deleted one after another leave no process, socket or file.
func TestVMCreateDeleteLeavesNothing(t *testing.T) {
	e := newVMEnv(t)
	for i := 0; i < 10; i++ {
		spec := &driver.Spec{ID: uuid.NewString(), Name: fmt.Sprintf("seq%d", i), Type: "vm", Image: "busybox",
			Config: map[string]string{"limits.memory": "128MiB"}}
		h, err := e.d.Create(testenv.Context(e.t, time.Minute), spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.d.Start(testenv.Context(e.t, time.Minute), h); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // half are deleted fully booted, half while still booting
			if err := e.d.WaitAgent(testenv.Context(e.t, vmBootDeadline), h); err != nil {
				t.Fatalf("guest %d hung: %v", i, err)
			}
		}
		if err := e.d.Delete(testenv.Context(e.t, time.Minute), h); err != nil {
			t.Fatal(err)
		}
		if st, _ := e.d.State(testenv.Context(e.t, 10*time.Second), h); st != driver.StatusGone {
			t.Fatalf("state after delete %s", st)
		}
	}
	if procs := processesMentioning(e.dirs.RunDir); len(procs) > 0 {
		t.Errorf("processes left: %v", procs)
	}
	for _, dir := range []string{e.dirs.RunDir, filepath.Join(e.dirs.Dir, "instances"), filepath.Join(e.dirs.Dir, "bases")} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) > 0 {
			t.Errorf("%s still holds %d entries (first %s)", dir, len(entries), entries[0].Name())
		}
	}
}

// processesMentioning lists live processes whose command line contains s.
func processesMentioning(s string) []string {
	var out []string
	pids, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		out = append(out, filepath.Base(filepath.Dir(p))+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
	}
	return out
}

// The Windows profile cannot boot Windows here, but its firmware must run: q35, OVMF with secure
// boot, a TPM from swtpm. OVMF's boot manager reaching the (unbootable) disk shows on the console.
func TestVMWindowsProfileReachesFirmware(t *testing.T) {
	e := newVMEnv(t)
	testenv.Require(t, "ovmf-ms", "swtpm")
	spec := &driver.Spec{ID: uuid.NewString(), Name: "win1", Type: "vm", Image: "busybox",
		Config: map[string]string{"image.os": "windows", "limits.memory": "512MiB"}}
	h, err := e.d.Create(testenv.Context(e.t, time.Minute), spec)
	if err != nil {
		t.Fatal(err)
	}
	defer e.d.Delete(testenv.Context(e.t, time.Minute), h)
	if err := e.d.Start(testenv.Context(e.t, time.Minute), h); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(e.d.ConsoleLogPath(h))
	if procs := processesMentioning(filepath.Join(e.dirs.RunDir, h.ID, "tpm.sock")); len(procs) < 2 {
		t.Errorf("want swtpm and qemu on the TPM socket, got %v", procs)
	}
	// OVMF logs its boot device selection (BdsDxe) once it has run its drivers; under TCG this takes
	// tens of seconds.
	deadline := time.Now().Add(3 * time.Minute)
	var seen string
	for time.Now().Before(deadline) {
		console, _ := os.ReadFile(e.d.ConsoleLogPath(h))
		fw, _ := os.ReadFile(filepath.Join(dir, "firmware.log"))
		all := string(console) + string(fw)
		if i := strings.Index(all, "BdsDxe"); i >= 0 {
			seen = all[i:min(len(all), i+200)]
			break
		}
		time.Sleep(time.Second)
	}
	if seen == "" {
		console, _ := os.ReadFile(e.d.ConsoleLogPath(h))
		t.Fatalf("OVMF hung: no BdsDxe line within 3 minutes; console:\n%s", tail(string(console), 2000))
	}
	t.Logf("firmware reached: %q", seen)
	if err := e.d.Stop(testenv.Context(e.t, time.Minute), h, driver.StopOpts{Force: true}); err != nil {
		t.Fatal(err)
	}
	if procs := processesMentioning(filepath.Join(e.dirs.RunDir, h.ID)); len(procs) > 0 {
		t.Errorf("left after stop: %v", procs)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// QEMU (and so the guest) can run as an unprivileged user: the driver hands it the instance's files.
func TestVMUnprivilegedQEMU(t *testing.T) {
	testenv.Require(t, vmtest.Components...)
	testenv.Require(t, "user-nobody")
	e := &vmEnv{t: t, dirs: vmtest.NewDirs(t), images: vmtest.BusyboxImages(t)}
	d, err := vm.New(vm.Options{Dir: e.dirs.Dir, RunDir: e.dirs.RunDir, Images: e.images, Accel: "tcg",
		KernelDir: vmtest.KernelDir(), AgentPath: vmtest.Agent(t), Busybox: vmtest.Busybox(), UserNetwork: true, User: "nobody"})
	if err != nil {
		t.Fatal(err)
	}
	e.d = d
	// t.TempDir is 0700 and root's: the unprivileged QEMU must be able to walk to its files.
	for p := e.dirs.Dir; strings.HasPrefix(p, os.TempDir()+"/"); p = filepath.Dir(p) {
		os.Chmod(p, 0o755) // stops below the shared temp dir, whose mode is not ours to change
	}
	h, _ := e.launch("unpriv", nil)
	if code, out, _ := e.exec(h, "echo", "ok"); code != 0 || out != "ok\n" {
		t.Fatalf("exec: %d %q", code, out)
	}
	procs := processesMentioning(filepath.Join(e.dirs.RunDir, h.ID, "qmp.sock"))
	if len(procs) != 1 {
		t.Fatalf("qemu processes: %v", procs)
	}
	pid := strings.SplitN(procs[0], ":", 2)[0]
	status, _ := os.ReadFile("/proc/" + pid + "/status")
	if !strings.Contains(string(status), "Uid:\t65534") {
		t.Errorf("qemu does not run as nobody:\n%s", status)
	}
}

// A guest that reboots comes back with a new agent, and exec works again over the same connection.
func TestVMGuestReboot(t *testing.T) {
	e := newVMEnv(t)
	h, _ := e.launch("reboot1", nil)
	if code, _, _ := e.exec(h, "touch", "/run/before-reboot"); code != 0 {
		t.Fatal("touch failed")
	}
	e.d.Exec(testenv.Context(e.t, 30*time.Second), h, vm.ExecRequest{Cmd: []string{"reboot"}})
	deadline := time.Now().Add(vmBootDeadline)
	for {
		code, err := e.d.Exec(testenv.Context(e.t, 20*time.Second), h, vm.ExecRequest{Cmd: []string{"test", "-e", "/run/before-reboot"}})
		if err == nil && code == 1 {
			break // /run is a fresh tmpfs: the guest rebooted, and its new agent answers
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from a rebooted guest within %v (last: %d %v)", vmBootDeadline, code, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.wantState(h, driver.StatusRunning)
	console, _ := os.ReadFile(e.d.ConsoleLogPath(h))
	if n := bytes.Count(console, []byte("tandem-init: start")); n != 2 {
		t.Errorf("console shows %d boots, want 2", n)
	}
}

// A guest that floods its serial console cannot fill the host: the console log rotates at 1 MiB to
// console.log.1 (about 2 MiB kept), both the owner's alone, and the newest output is in the log.
// The log is kept by a process of its own, which goes when QEMU does.
func TestVMConsoleLogCapped(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startDaemon(t, "--accel", "tcg", "--network=false")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "v1", "--vm")
	waitAgent(t, h, "v1")
	const flood = 2500000 // bytes, 2.4 MiB: two rotations
	start := time.Now()
	h.must("exec", "v1", "--", "sh", "-c",
		fmt.Sprintf("yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c %d > /dev/ttyS0; echo END-OF-FLOOD > /dev/ttyS0", flood))
	logs, _ := filepath.Glob(filepath.Join(h.dir, "vm", "instances", "*", "console.log"))
	if len(logs) != 1 {
		t.Fatalf("console logs: %v", logs)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if b, _ := os.ReadFile(logs[0]); bytes.Contains(b, []byte("END-OF-FLOOD")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the end of the flood never reached the console log")
		}
	}
	var total int64
	for _, f := range []string{logs[0], logs[0] + ".1"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatalf("after %d bytes: %v", flood, err)
		}
		if fi.Size() > 1<<20 || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %d bytes, mode %v; want at most 1 MiB, 0600", f, fi.Size(), fi.Mode().Perm())
		}
		total += fi.Size()
	}
	t.Logf("the guest printed %d bytes in %s; the host keeps %d", flood, time.Since(start).Round(time.Millisecond), total)
	h.must("stop", "v1", "--force")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out, _ := exec.Command("pgrep", "-f", vm.ConsoleLogArg+" .*"+h.dir).Output()
		if len(out) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console log's process outlived QEMU: %s", out)
		}
	}
	h.must("delete", "v1")
}
