package storage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/internal/progress"
)

// The state a crash in the middle of a copy leaves, written by hand: the new volume's record in
// state creating with this host's operation, a partial data directory, and a scratch directory.
func TestRecoverInterruptedCopy(t *testing.T) {
	m, ctx := defaultPool(t)
	root := m.pools["default"].Path
	must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "src", Type: TypeContainer}))
	op := &Operation{ID: m.hostTag + "-dead", Op: "copy", Host: "host-a", Source: "default/container/src", Started: time.Now()}
	half := &Volume{Name: "dst", Type: TypeContainer, ContentType: ContentFilesystem, Format: FormatDir, State: StateCreating, Pending: op}
	must0(t, m.saveRecord(m.pools["default"], half))
	writeFile(t, dataPath(root, TypeContainer, "dst")+"/half-copied", "x")
	writeFile(t, lockBase(root, TypeContainer, "dst")+".meta", "")
	writeFile(t, tmpPath(root, m.hostTag+"-dead2")+"/junk", "x")
	// Another host's copy in progress on the same (shared) pool is not ours to undo.
	theirs := *half
	theirs.Name, theirs.Pending = "theirs", &Operation{ID: "ffff-1", Op: "copy", Host: "host-b"}
	must0(t, m.saveRecord(m.pools["default"], &theirs))
	writeFile(t, tmpPath(root, "ffff-2")+"/junk", "x")

	m2 := newManager(t, m.dir, "host-a") // the restarted daemon
	for i := 0; i < 2; i++ {             // idempotent
		must0(t, m2.Recover(ctx))
	}
	for _, p := range []string{dataPath(root, TypeContainer, "dst"), recordPath(root, TypeContainer, "dst"),
		lockBase(root, TypeContainer, "dst") + ".meta", tmpPath(root, m.hostTag+"-dead2")} {
		if exists(p) {
			t.Errorf("Recover left %s", p)
		}
	}
	if !exists(recordPath(root, TypeContainer, "theirs")) || !exists(tmpPath(root, "ffff-2")) {
		t.Error("Recover removed another host's work")
	}
	if v := must[*Volume](t)(m2.GetVolume(ctx, "default", "container/src")); v.State != StateReady {
		t.Errorf("source %+v", v)
	}
}

// A restore cut between its two renames is completed; a half-made snapshot and a delete are
// finished.
func TestRecoverOtherOperations(t *testing.T) {
	m, ctx := defaultPool(t)
	p := m.pools["default"]
	v := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "r", Type: TypeContainer}))
	data := dataPath(p.Path, v.Type, v.Name)
	writeFile(t, data+"/f", "old")
	must0(t, m.SnapshotVolume(ctx, "default", "container/r", "s"))
	v = must[*Volume](t)(m.GetVolume(ctx, "default", "container/r"))
	writeFile(t, data+"/f", "new")
	// restore: new copy complete, old data moved aside, new not yet renamed in
	op := &Operation{ID: m.hostTag + "-r", Op: "restore", Host: "host-a", Snapshot: "s", Tmp: tmpPath(p.Path, m.hostTag+"-r")}
	writeFile(t, op.Tmp+"/new/f", "old")
	must0(t, os.Rename(data, op.Tmp+"/old"))
	v.Pending = op
	must0(t, m.saveRecord(p, v))
	// snapshot: data made, record not yet updated
	w := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "w", Type: TypeContainer}))
	w.Pending = &Operation{ID: m.hostTag + "-s", Op: "snapshot", Host: "host-a", Snapshot: "half"}
	writeFile(t, snapPath(p.Path, w.Type, w.Name, "half")+"/f", "x")
	must0(t, m.saveRecord(p, w))
	// delete: record marked, data partly gone
	d := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "d", Type: TypeContainer}))
	d.State, d.Pending = StateDeleting, &Operation{ID: m.hostTag + "-d", Op: "delete", Host: "host-a"}
	must0(t, m.saveRecord(p, d))

	m2 := newManager(t, m.dir, "host-a")
	must0(t, m2.Recover(ctx))
	if got := readFile(t, data+"/f"); got != "old" || exists(op.Tmp) {
		t.Errorf("restore: data %q, scratch left %v", got, exists(op.Tmp))
	}
	if r := must[*Volume](t)(m2.GetVolume(ctx, "default", "container/r")); r.Pending != nil || len(r.Snapshots) != 1 {
		t.Errorf("restored record %+v", r)
	}
	if w := must[*Volume](t)(m2.GetVolume(ctx, "default", "container/w")); w.Pending != nil || len(w.Snapshots) != 0 ||
		exists(snapPath(p.Path, TypeContainer, "w", "half")) {
		t.Errorf("half snapshot: record %+v", w)
	}
	if exists(recordPath(p.Path, TypeContainer, "d")) || exists(dataPath(p.Path, TypeContainer, "d")) {
		t.Error("interrupted delete not finished")
	}
}

// A real crash: a child process copies a volume and is SIGKILLed half way; Recover in a new
// manager leaves no trace of the copy.
const crashChildEnv = "TANDEM_STORAGE_CRASH_CHILD"

func TestRecoverAfterSIGKILL(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	m, ctx := defaultPool(t)
	v := must[*Volume](t)(m.CreateVolume(ctx, "default", VolumeConfig{Name: "big", Type: TypeContainer}))
	data := dataPath(m.pools["default"].Path, v.Type, v.Name)
	for i := 0; i < 20; i++ {
		writeFile(t, fmt.Sprintf("%s/f%02d", data, i), strings.Repeat("y", 1<<20))
	}
	must[*Pool](t)(m.CreatePool(ctx, PoolConfig{Name: "other", Driver: DriverDir}))
	m.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestRecoverAfterSIGKILL$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+m.dir)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	must0(t, cmd.Start())
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "HALFWAY" {
	}
	must0(t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()

	other := filepath.Join(m.dir, "pools", "other")
	if !exists(dataPath(other, TypeContainer, "copy")) {
		t.Fatal("the child was killed before it copied anything")
	}
	m2 := newManager(t, m.dir, "host-a")
	must0(t, m2.Recover(ctx))
	for _, d := range []string{"volumes", "meta", "snapshots", "tmp"} {
		ents, _ := filepath.Glob(filepath.Join(other, d, "*", "*"))
		if d == "tmp" {
			ents, _ = filepath.Glob(filepath.Join(other, d, "*"))
		}
		if len(ents) != 0 {
			t.Errorf("orphans after Recover: %v", ents)
		}
	}
	// The copy can be made again under the same name.
	must[*Volume](t)(m2.CopyVolume(ctx, "default", "container/big", "other", "copy"))
}

// crashChild copies a volume and stops half way, waiting for its SIGKILL.
func crashChild(dir string) {
	m, err := NewManager(Options{Dir: dir, HostID: "host-a"})
	if err != nil {
		panic(err)
	}
	ctx := progress.With(context.Background(), func(pct int, _ string) {
		if pct >= 50 {
			fmt.Println("HALFWAY")
			time.Sleep(time.Minute)
		}
	})
	m.CopyVolume(ctx, "default", "container/big", "other", "copy")
	os.Exit(3)
}
