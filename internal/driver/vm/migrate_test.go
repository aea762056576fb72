package vm

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"tandem/internal/qmp/qmptest"
	"tandem/internal/testenv"
)

// The mirrored migration as QEMU sees it: the mirror is in sync before RAM moves, and it ends while
// the guest is paused at pre-switchover, before QEMU inactivates the disks.
func TestMigrateOutMirrorSequence(t *testing.T) {
	want := func(k, v string) func(json.RawMessage) error {
		return func(args json.RawMessage) error {
			if !strings.Contains(string(args), fmt.Sprintf("%q:%q", k, v)) {
				return fmt.Errorf("args %s lack %s=%s", args, k, v)
			}
			return nil
		}
	}
	job := map[string]any{"device": mirrorNode, "len": 1 << 20, "offset": 1 << 20, "type": "mirror"}
	f := newFakeVM(t,
		qmptest.Expect("query-status").Return(running()),
		qmptest.Expect("migrate-set-capabilities").CheckArgs(func(args json.RawMessage) error {
			if !strings.Contains(string(args), `{"capability":"pause-before-switchover","state":true}`) {
				return fmt.Errorf("no pause-before-switchover: %s", args)
			}
			return nil
		}),
		qmptest.Expect("migrate-set-parameters"),
		qmptest.Expect("blockdev-add").CheckArgs(want("driver", "nbd")),
		qmptest.Expect("blockdev-mirror").CheckArgs(want("copy-mode", "write-blocking")).Event("BLOCK_JOB_READY", job),
		qmptest.Expect("migrate").CheckArgs(want("uri", "tcp:127.0.0.1:4444")).Event("MIGRATION", map[string]any{"status": "pre-switchover"}),
		qmptest.Expect("block-job-cancel").CheckArgs(want("device", mirrorNode)).Event("BLOCK_JOB_COMPLETED", job),
		qmptest.Expect("migrate-continue").Event("MIGRATION", map[string]any{"status": "completed"}),
		qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "postmigrate"}),
		qmptest.Expect("query-migrate").Return(map[string]any{"status": "completed", "total-time": 300, "downtime": 12,
			"ram": map[string]any{"transferred": 5 << 20, "total": 256 << 20}}),
		qmptest.Expect("blockdev-del").CheckArgs(want("node-name", mirrorNode)),
	)
	var phases []string
	res, err := f.d.MigrateOut(testenv.Context(t, time.Minute), f.h, MigrateOpts{URI: "tcp:127.0.0.1:4444", NBD: "tcp:127.0.0.1:4445",
		Progress: func(p MigrationProgress) { phases = append(phases, p.Phase) }})
	if err != nil {
		t.Fatalf("MigrateOut: %v (commands %v)", err, f.srv.Names())
	}
	if res.Downtime != 12*time.Millisecond || res.TotalTime != 300*time.Millisecond || res.RAMBytes != 5<<20 || res.Mode != migMirror {
		t.Errorf("result %+v", res)
	}
	if !slices.Contains(phases, PhaseSwitchover) || phases[len(phases)-1] != PhaseCompleted {
		t.Errorf("progress phases %v", phases)
	}
	cfg, _ := loadConfig(f.p)
	if cfg.Outgoing != migMirror {
		t.Errorf("instance.json outgoing %q", cfg.Outgoing)
	}
}

// A migration that fails leaves the guest running: QEMU resumes it itself, and the nbd node goes.
func TestMigrateOutFailureResumes(t *testing.T) {
	failed := map[string]any{"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}
	f := newFakeVM(t,
		qmptest.Expect("query-status").Return(running()),
		qmptest.Expect("migrate-set-capabilities"),
		qmptest.Expect("migrate-set-parameters"),
		qmptest.Expect("migrate").Event("MIGRATION", map[string]any{"status": "failed"}),
		qmptest.Expect("query-migrate").Return(failed),
		qmptest.Expect("query-migrate").Return(failed), // the rollback: nothing left to cancel
		qmptest.Expect("query-block-jobs").Return([]any{}),
		qmptest.Expect("blockdev-del").Fail("GenericError", "Failed to find node with node-name='mig-root'"),
		qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "paused"}),
		qmptest.Expect("cont"),
	)
	writeJSON(f.p.config, instanceConfig{Name: "f1", Machine: "q35", Firmware: "bios", Disk: "/shared/f1.qcow2"})
	_, err := f.d.MigrateOut(testenv.Context(t, time.Minute), f.h, MigrateOpts{URI: "unix:/run/x/mig.sock"})
	if err == nil || !strings.Contains(err.Error(), "Broken pipe") || !strings.Contains(err.Error(), "keeps running here") {
		t.Fatalf("MigrateOut: %v", err)
	}
	if p := f.srv.Pending(); len(p) > 0 {
		t.Errorf("commands not sent: %v", p)
	}
}

// A disk in the instance dir is local whatever the caller says: a shared move of it is refused.
func TestMigrateOutSharedNeedsSharedDisk(t *testing.T) {
	f := newFakeVM(t)
	if _, err := f.d.MigrateOut(testenv.Context(t, time.Minute), f.h, MigrateOpts{URI: "tcp:127.0.0.1:1"}); err == nil {
		t.Fatal("MigrateOut accepted a shared move of an instance-dir disk")
	}
}

func TestParseAddr(t *testing.T) {
	for in, ok := range map[string]bool{"tcp:127.0.0.1:4444": true, "tcp:[::1]:4444": true, "unix:/run/m.sock": true,
		"tcp:127.0.0.1:0": false, "tcp::4444": false, "unix:": false, "exec:cat": false, "127.0.0.1:4444": false} {
		if _, err := parseAddr(in); (err == nil) != ok {
			t.Errorf("parseAddr(%q) = %v", in, err)
		}
	}
	a, _ := parseAddr("tcp:[::1]:4444")
	if a.host != "::1" || a.port != "4444" {
		t.Errorf("%+v", a)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{{"7.2.22", "7.2.22", 0}, {"8.0.0", "7.2.22", 1}, {"7.2", "7.2.1", -1}, {"10.0.0", "9.2.0", 1}} {
		if got := compareVersions(c.a, c.b); got != c.want {
			t.Errorf("compareVersions(%s, %s) = %d", c.a, c.b, got)
		}
	}
}

// Resume must not cont a migration's end: on the source that would run the guest on two hosts.
func TestResumeRefusesPostmigrate(t *testing.T) {
	f := newFakeVM(t, qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "postmigrate"}))
	if err := f.d.Resume(testenv.Context(t, time.Minute), f.h); err == nil {
		t.Fatal("Resume of a postmigrate source succeeded")
	}
	if slices.Contains(f.srv.Names(), "cont") {
		t.Error("cont was sent")
	}
}
