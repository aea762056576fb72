package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/qmp/qmptest"
	"tandem/internal/testenv"
)

// These tests drive the lifecycle against a scripted QMP socket and a stand-in process whose
// command line names the socket, as QEMU's does: no QEMU needed.

type noImages struct{}

func (noImages) Rootfs(context.Context, string) (string, driver.ImageInfo, error) {
	return "", driver.ImageInfo{}, errdefs.NotFound("no images here")
}

type fakeVM struct {
	d      *Driver
	h      *driver.Handle
	p      paths
	srv    *qmptest.Server
	pid    int
	exited chan struct{}
}

func newFakeVM(t *testing.T, script ...*qmptest.Step) *fakeVM {
	t.Helper()
	run, err := os.MkdirTemp("", "tvmu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	d, err := New(Options{Dir: t.TempDir(), RunDir: run, Images: noImages{}})
	if err != nil {
		t.Fatal(err)
	}
	h := &driver.Handle{ID: uuid.NewString(), Driver: "vm", Spec: driver.Spec{Name: "f1"}}
	p := d.paths(h.ID)
	os.MkdirAll(p.dir, 0o700)
	os.MkdirAll(p.run, 0o700)
	if err := writeJSON(p.config, instanceConfig{Name: "f1", Machine: "q35", Firmware: "bios"}); err != nil {
		t.Fatal(err)
	}
	srv := qmptest.NewServer(t, script...)
	if err := os.Symlink(srv.Path(), p.qmp); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "sleep 600; : "+p.qmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &fakeVM{d: d, h: h, p: p, srv: srv, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(f.exited) }()
	t.Cleanup(func() { f.die(); <-f.exited })
	os.WriteFile(p.pidfile, []byte(strconv.Itoa(f.pid)+"\n"), 0o600)
	// The driver knows its QEMU by the command line: wait until the child has exec'd (under load,
	// a just-forked child still shows the test binary's).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", f.pid)); strings.Contains(string(cmdline), p.qmp) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fake QEMU did not start within 10s")
		}
	}
	return f
}

// die is QEMU exiting.
func (f *fakeVM) die() { syscall.Kill(-f.pid, syscall.SIGKILL) }

// dieOn makes QEMU exit once the server has received command.
func (f *fakeVM) dieOn(t *testing.T, command string) {
	go func() {
		if _, ok := f.srv.WaitFor(command, 30*time.Second); ok {
			f.die()
		}
	}()
}

func running() any { return map[string]any{"running": true, "status": "running"} }

func TestStopGracefulPressesPowerButton(t *testing.T) {
	f := newFakeVM(t,
		qmptest.Expect("query-status").Return(running()),
		qmptest.Expect("system_powerdown").Event("POWERDOWN", nil),
	)
	f.dieOn(t, "system_powerdown") // the guest acts on the button
	if err := f.d.Stop(testenv.Context(t, time.Minute), f.h, driver.StopOpts{Timeout: 20 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(f.srv.Names(), "quit") {
		t.Errorf("graceful stop sent quit: %v", f.srv.Names())
	}
	if _, err := os.Stat(f.p.pidfile); err == nil {
		t.Error("pidfile left behind")
	}
}

func TestStopForceQuits(t *testing.T) {
	f := newFakeVM(t, qmptest.Expect("quit").HangUp())
	f.dieOn(t, "quit")
	if err := f.d.Stop(testenv.Context(t, time.Minute), f.h, driver.StopOpts{Force: true}); err != nil {
		t.Fatal(err)
	}
	if st, _ := f.d.State(testenv.Context(t, time.Minute), f.h); st != driver.StatusStopped {
		t.Fatalf("state %s", st)
	}
	if err := f.d.Stop(testenv.Context(t, time.Minute), f.h, driver.StopOpts{}); !errors.Is(err, driver.ErrNotRunning) {
		t.Fatalf("second stop: %v", err)
	}
}

// A guest that ignores the button is stopped with quit once the timeout passes, and SIGKILL if
// QEMU does not even quit.
func TestStopIgnoredButtonFallsBack(t *testing.T) {
	f := newFakeVM(t)
	f.srv.Handle("query-status", qmptest.Expect("query-status").Return(running()))
	f.srv.Handle("system_powerdown", qmptest.Expect("system_powerdown"))
	f.srv.Handle("quit", qmptest.Expect("quit")) // answers, but the process stays: SIGKILL it is
	start := time.Now()
	if err := f.d.Stop(testenv.Context(t, time.Minute), f.h, driver.StopOpts{Timeout: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	presses := 0
	for _, n := range f.srv.Names() {
		if n == "system_powerdown" {
			presses++
		}
	}
	if presses < 2 || !slices.Contains(f.srv.Names(), "quit") {
		t.Errorf("commands %v: want repeated presses, then quit", f.srv.Names())
	}
	if took < 3*time.Second || took > 3*time.Second+quitTimeout+5*time.Second {
		t.Errorf("stop took %v", took)
	}
	select {
	case <-f.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the process survived")
	}
}

func TestStopPausedGuestResumesFirst(t *testing.T) {
	f := newFakeVM(t,
		qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "paused"}),
		qmptest.Expect("cont"),
		qmptest.Expect("system_powerdown"),
	)
	f.dieOn(t, "system_powerdown")
	if err := f.d.Stop(testenv.Context(t, time.Minute), f.h, driver.StopOpts{Timeout: 20 * time.Second}); err != nil {
		t.Fatal(err)
	}
}

func TestPauseResumeAndState(t *testing.T) {
	f := newFakeVM(t,
		qmptest.Expect("stop").EventBefore("STOP", nil),
		qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "paused"}),
		qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "paused"}), // Resume's check
		qmptest.Expect("cont").EventBefore("RESUME", nil),
		qmptest.Expect("query-status").Return(running()),
	)
	if err := f.d.Pause(testenv.Context(t, time.Minute), f.h); err != nil {
		t.Fatal(err)
	}
	if st, err := f.d.State(testenv.Context(t, time.Minute), f.h); err != nil || st != driver.StatusPaused {
		t.Fatalf("state %s %v", st, err)
	}
	if err := f.d.Resume(testenv.Context(t, time.Minute), f.h); err != nil {
		t.Fatal(err)
	}
	if st, err := f.d.State(testenv.Context(t, time.Minute), f.h); err != nil || st != driver.StatusRunning {
		t.Fatalf("state %s %v", st, err)
	}
}

func TestStateOfDeadAndUnknown(t *testing.T) {
	f := newFakeVM(t)
	f.die()
	<-f.exited
	if st, err := f.d.State(testenv.Context(t, time.Minute), f.h); err != nil || st != driver.StatusStopped {
		t.Fatalf("dead qemu: %s %v", st, err)
	}
	if err := f.d.Pause(testenv.Context(t, time.Minute), f.h); !errors.Is(err, driver.ErrNotRunning) {
		t.Fatalf("pause of a dead VM: %v", err)
	}
	other := &driver.Handle{ID: uuid.NewString()}
	if st, _ := f.d.State(testenv.Context(t, time.Minute), other); st != driver.StatusGone {
		t.Fatalf("unknown: %s", st)
	}
}

func TestRecoverChecksMonitor(t *testing.T) {
	f := newFakeVM(t, qmptest.Expect("query-status").Return(running()),
		qmptest.Expect("query-migrate").Return(map[string]any{})) // no orphaned migration to cancel
	if err := f.d.Recover(testenv.Context(t, time.Minute), f.h); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(f.h.DriverState), strconv.Itoa(f.pid)) {
		t.Errorf("handle state %s lacks pid %d", f.h.DriverState, f.pid)
	}
}

func TestStatusMapping(t *testing.T) {
	for qs, want := range map[string]driver.Status{
		"running": driver.StatusRunning, "paused": driver.StatusPaused, "prelaunch": driver.StatusPaused,
		"inmigrate": driver.StatusPaused, "postmigrate": driver.StatusStopped, "shutdown": driver.StatusStopped,
		"guest-panicked": driver.StatusPaused,
	} {
		if got := statusOf(qs); got != want {
			t.Errorf("%s: %s, want %s", qs, got, want)
		}
	}
}

// A QEMU that exits at start-up fails Start with its own message, at once.
func TestStartReportsQEMUError(t *testing.T) {
	testenv.Require(t, "busybox") // for the initramfs
	run, _ := os.MkdirTemp("", "tvmu")
	defer os.RemoveAll(run)
	dir := t.TempDir()
	kdir := filepath.Join(dir, "kernel")
	os.MkdirAll(filepath.Join(kdir, "lib/modules/9.9"), 0o755)
	os.WriteFile(filepath.Join(kdir, "vmlinux"), []byte("not a kernel"), 0o644)
	os.WriteFile(filepath.Join(kdir, "kernel-version"), []byte("9.9\n"), 0o644)
	os.WriteFile(filepath.Join(kdir, "lib/modules/9.9/modules.dep"), nil, 0o644)
	fakeQEMU := filepath.Join(dir, "qemu")
	os.WriteFile(fakeQEMU, []byte("#!/bin/sh\necho 'qemu-system-x86_64: -machine q35: something is wrong' >&2\nexit 1\n"), 0o755)
	d, err := New(Options{Dir: filepath.Join(dir, "state"), RunDir: run, Images: noImages{}, QEMU: fakeQEMU,
		KernelDir: kdir, Busybox: "/bin/busybox", AgentPath: filepath.Join(dir, "none"), Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	h := &driver.Handle{ID: uuid.NewString(), Spec: driver.Spec{Name: "x"}}
	p := d.paths(h.ID)
	os.MkdirAll(p.dir, 0o700)
	writeJSON(p.config, instanceConfig{Name: "x", Machine: "q35", Firmware: "bios"})
	start := time.Now()
	err = d.Start(testenv.Context(t, time.Minute), h)
	if err == nil || !strings.Contains(err.Error(), "something is wrong") {
		t.Fatalf("Start: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("failing start took %v", time.Since(start))
	}
	if entries, _ := os.ReadDir(p.run); len(entries) > 0 {
		t.Errorf("run dir not cleaned: %v", entries)
	}
}
