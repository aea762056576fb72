package qmp_test

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem/internal/hostexec"
	"tandem/internal/qmp"
	"tandem/internal/testenv"
)

// qemuProc is a real QEMU started for a test; it is killed at cleanup.
type qemuProc struct {
	c      *qmp.Client
	exited chan struct{}
	dir    string
}

// startQEMU runs qemu-system-x86_64 paused (-S), with no guest, under TCG,
// and dials its QMP socket. It skips the test when QEMU is absent.
func startQEMU(t *testing.T, ctx context.Context, args ...string) *qemuProc {
	t.Helper()
	testenv.Require(t, "qemu")
	bin, err := hostexec.Look("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	base := []string{"-nodefaults", "-display", "none", "-accel", "tcg", "-S",
		"-qmp", "unix:" + sock + ",server=on,wait=off"}
	cmd := exec.Command(bin, append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &qemuProc{exited: make(chan struct{}), dir: dir}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		case <-time.After(100 * time.Millisecond):
			cmd.Process.Kill()
			<-p.exited
		}
	})
	// The socket appears once QEMU has parsed its command line.
	for {
		p.c, err = qmp.Dial(ctx, sock)
		if err == nil {
			t.Cleanup(func() { p.c.Close() })
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("qemu exited early: %s", stderr.String())
		case <-ctx.Done():
			t.Fatalf("qemu QMP socket never answered (hung?): %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *qemuProc) quit(t *testing.T, ctx context.Context) {
	t.Helper()
	w := p.c.ExpectEvent(qmp.EventShutdown, nil)
	if err := p.c.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Wait(ctx); err != nil && !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("no SHUTDOWN event: %v", err)
	}
	select {
	case <-p.c.Done():
	case <-ctx.Done():
		t.Fatal("QMP connection still open after quit")
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		t.Fatal("qemu did not exit after quit (hung)")
	}
}

func TestRealQEMU(t *testing.T) {
	ctx := testenv.Context(t, 30*time.Second)
	p := startQEMU(t, ctx, "-M", "pc", "-m", "64", "-device", "virtio-serial-pci,id=vs0")
	c := p.c

	v, err := c.QueryVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ma, mi, mc := c.Version(); v.QEMU.Major != ma || v.QEMU.Minor != mi || v.QEMU.Micro != mc || ma < 7 {
		t.Errorf("greeting %d.%d.%d, query-version %+v", ma, mi, mc, v)
	}
	t.Logf("QEMU %d.%d.%d (%s)", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, v.Package)

	st, err := c.QueryStatus(ctx)
	if err != nil || st.Status != qmp.StatePrelaunch || st.Running {
		t.Fatalf("QueryStatus = %+v, %v; want prelaunch", st, err)
	}
	if _, err := c.ExecuteAndWait(ctx, "cont", nil, nil, qmp.EventResume, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecuteAndWait(ctx, "stop", nil, nil, qmp.EventStop, nil); err != nil {
		t.Fatal(err)
	}
	if st, err := c.QueryStatus(ctx); err != nil || st.Status != qmp.StatePaused {
		t.Fatalf("after stop QueryStatus = %+v, %v", st, err)
	}
	out, err := c.HumanMonitorCommand(ctx, "info status")
	if err != nil || !strings.Contains(out, "paused") {
		t.Errorf("info status = %q, %v", out, err)
	}
	cpus, err := c.QueryCPUsFast(ctx)
	if err != nil || len(cpus) != 1 || cpus[0].ThreadID == 0 {
		t.Errorf("QueryCPUsFast = %+v, %v", cpus, err)
	}

	// A virtio-serial port unplugs without guest help, so DeviceDel's
	// wait for DEVICE_DELETED can be seen end to end.
	backend := map[string]any{"type": "socket", "data": map[string]any{
		"addr":   map[string]any{"type": "unix", "data": map[string]any{"path": filepath.Join(p.dir, "c1.sock")}},
		"server": true, "wait": false}}
	if _, err := c.ChardevAdd(ctx, "c1", backend); err != nil {
		t.Fatal(err)
	}
	port := map[string]any{"driver": "virtserialport", "id": "p1", "bus": "vs0.0", "chardev": "c1", "name": "org.tandem.test"}
	if err := c.DeviceAdd(ctx, port); err != nil {
		t.Fatal(err)
	}
	if err := c.DeviceDel(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if err := c.ChardevRemove(ctx, "c1"); err != nil {
		t.Fatal(err)
	}

	var qe *qmp.Error
	if err := c.BalloonSet(ctx, 32<<20); !errors.As(err, &qe) || qe.Class != "DeviceNotActive" {
		t.Errorf("balloon without a device: %v", err)
	}
	if err := c.DeviceDel(ctx, "absent"); !errors.As(err, &qe) || qe.Class != "DeviceNotFound" {
		t.Errorf("device_del of a missing device: %v", err)
	}
	p.quit(t, ctx)
}

// Two QEMUs migrate over a unix socket: migrate-incoming, capabilities,
// parameters, migrate, MIGRATION events and query-migrate all for real.
func TestRealQEMUMigration(t *testing.T) {
	ctx := testenv.Context(t, 60*time.Second)
	machine := []string{"-M", "pc", "-m", "64"}
	src := startQEMU(t, ctx, machine...)
	dst := startQEMU(t, ctx, append(machine, "-incoming", "defer")...)
	if st, err := dst.c.QueryStatus(ctx); err != nil || st.Status != qmp.StateInMigrate {
		t.Fatalf("destination status %+v, %v", st, err)
	}
	uri := "unix:" + filepath.Join(dst.dir, "mig.sock")
	for _, p := range []*qemuProc{src, dst} {
		if err := p.c.MigrateSetCapabilities(ctx, map[string]bool{"events": true}); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.c.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": 1 << 30}); err != nil {
		t.Fatal(err)
	}
	if err := dst.c.MigrateIncoming(ctx, uri); err != nil {
		t.Fatal(err)
	}
	done := func(ev qmp.Event) bool {
		var d struct{ Status string }
		return ev.Decode(&d) == nil && (d.Status == qmp.MigrationCompleted || d.Status == qmp.MigrationFailed)
	}
	dstDone := dst.c.ExpectEvent(qmp.EventMigration, done)
	ev, err := src.c.ExecuteAndWait(ctx, "migrate", map[string]any{"uri": uri}, nil, qmp.EventMigration, done)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dstDone.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := src.c.QueryMigrate(ctx)
	if err != nil || m.Status != qmp.MigrationCompleted || m.RAM == nil || m.RAM.Total == 0 {
		t.Fatalf("QueryMigrate = %+v, %v (event %s)", m, err, ev.Data)
	}
	t.Logf("migrated: total %d ms, downtime %d ms, %d bytes", m.TotalTime, m.Downtime, m.RAM.Transferred)
	// The source reports "completed" a moment before its run state
	// leaves finish-migrate for postmigrate: poll rather than assume.
	for {
		st, err := src.c.QueryStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Status == qmp.StatePostMigrate {
			break
		}
		if st.Status != qmp.StateFinishMigrate {
			t.Fatalf("source status after migration: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	src.quit(t, ctx)
	dst.quit(t, ctx)
}
