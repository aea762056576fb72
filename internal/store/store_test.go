package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"tandem/api"
	"tandem/internal/errdefs"
)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestInstanceCRUD(t *testing.T) {
	s, _ := openTemp(t)
	rec := &InstanceRecord{Name: "c1", Type: "container", Desired: DesiredState{Power: "stopped", Config: map[string]string{"limits.cpu": "1"}}}
	if err := s.CreateInstance(rec); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateInstance(rec); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second create: want ErrAlreadyExists, got %v", err)
	}
	got, err := s.UpdateInstance("c1", func(r *InstanceRecord) error { r.Desired.Power = "running"; return nil })
	if err != nil || got.Desired.Power != "running" {
		t.Fatalf("update: %v %+v", err, got)
	}
	// A failing update writes nothing.
	_, err = s.UpdateInstance("c1", func(r *InstanceRecord) error { r.Desired.Power = "stopped"; return errors.New("boom") })
	if err == nil {
		t.Fatal("want error")
	}
	if got, _ := s.GetInstance("c1"); got.Desired.Power != "running" {
		t.Fatalf("failed update leaked: %+v", got.Desired)
	}
	if _, err := s.UpdateInstance("c1", func(r *InstanceRecord) error { r.Name = "c2"; return nil }); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("rename: %v", err)
	}
	list, _ := s.ListInstances()
	if len(list) != 1 || list[0].Desired.Config["limits.cpu"] != "1" {
		t.Fatalf("list: %+v", list)
	}
	if err := s.DeleteInstance("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetInstance("c1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if err := s.DeleteInstance("c1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestOperations(t *testing.T) {
	s, _ := openTemp(t)
	now := time.Now()
	for i := 0; i < 3; i++ {
		op := &api.Operation{ID: fmt.Sprint("op", i), Status: api.OpRunning, CreatedAt: now.Add(time.Duration(-i) * time.Second)}
		if err := s.PutOperation(op); err != nil {
			t.Fatal(err)
		}
	}
	ops, _ := s.ListOperations()
	if len(ops) != 3 || ops[0].ID != "op2" {
		t.Fatalf("want oldest first: %+v", ops)
	}
	if _, err := s.GetOperation("nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatal(err)
	}
	s.DeleteOperation("op1")
	if ops, _ := s.ListOperations(); len(ops) != 2 {
		t.Fatalf("delete: %d left", len(ops))
	}
}

// A schema 1 file, as written by the first release, is migrated to the current schema on open.
func TestMigrateFromSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put(keySchema, []byte("1"))
		b, _ := tx.CreateBucket(bucketInstances)
		for name, state := range map[string]string{"web": "running", "db": "stopped"} {
			data, _ := json.Marshal(instanceV1{Name: name, Type: "container", State: state, Config: map[string]string{"limits.memory": "1GiB"}})
			b.Put([]byte(name), data)
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(); v != CurrentSchema {
		t.Fatalf("schema %d, want %d", v, CurrentSchema)
	}
	web, err := s.GetInstance("web")
	if err != nil {
		t.Fatal(err)
	}
	if web.Desired.Power != "running" || web.Desired.Config["limits.memory"] != "1GiB" || web.Observed.Status != "Unknown" {
		t.Fatalf("web migrated wrong: %+v", web)
	}
	if db, _ := s.GetInstance("db"); db.Desired.Power != "stopped" {
		t.Fatalf("db migrated wrong: %+v", db)
	}
	// The new operations bucket exists.
	if err := s.PutOperation(&api.Operation{ID: "x"}); err != nil {
		t.Fatal(err)
	}
}

func TestRefuseNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, _ := bolt.Open(path, 0o600, nil)
	db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		return meta.Put(keySchema, []byte(strconv.Itoa(CurrentSchema+1)))
	})
	db.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("opened a file from the future")
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	_, path := openTemp(t)
	start := time.Now()
	if _, err := Open(path); err == nil {
		t.Fatal("second open of a locked state file succeeded")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("lock wait not bounded")
	}
}

// crashWriterEnv makes the test binary act as a writer that is SIGKILLed mid-stream.
const crashWriterEnv = "TANDEM_STORE_CRASH_WRITER"

// TestCrashSafety kills a process that is writing records as fast as it can, many times, and checks
// after each kill that the file opens and every record is whole: each write updates two fields that
// must always agree.
func TestCrashSafety(t *testing.T) {
	if path := os.Getenv(crashWriterEnv); path != "" {
		crashWriter(path)
		return
	}
	if testing.Short() {
		t.Skip("crash test skipped in -short mode")
	}
	path := filepath.Join(t.TempDir(), "state.db")
	for round := 0; round < 5; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$")
		cmd.Env = append(os.Environ(), crashWriterEnv+"="+path)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until the writer says it is writing, then let it run a little and kill it.
		buf := make([]byte, 5)
		if _, err := stdout.Read(buf); err != nil {
			t.Fatalf("writer did not start: %v", err)
		}
		time.Sleep(time.Duration(20+round*15) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		s, err := Open(path)
		if err != nil {
			t.Fatalf("round %d: state file unusable after kill: %v", round, err)
		}
		recs, err := s.ListInstances()
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			t.Fatalf("round %d: no records written", round)
		}
		for _, r := range recs {
			if r.Image != r.Desired.Config["seq"] {
				t.Fatalf("round %d: torn record %s: image %q vs seq %q", round, r.Name, r.Image, r.Desired.Config["seq"])
			}
		}
		s.Close()
	}
}

func crashWriter(path string) {
	s, err := Open(path)
	if err != nil {
		os.Exit(3)
	}
	os.Stdout.Write([]byte("ready"))
	for i := 0; ; i++ {
		name := fmt.Sprint("i", i%20)
		seq := strconv.Itoa(i)
		rec := &InstanceRecord{Name: name, Image: seq, Desired: DesiredState{Config: map[string]string{"seq": seq}}}
		if _, err := s.UpdateInstance(name, func(r *InstanceRecord) error { *r = *rec; return nil }); err != nil {
			s.CreateInstance(rec)
		}
	}
}

// A corrupt operation record (a torn write, a hand edit) must not stop the daemon: listing skips it,
// so start-up's recovery of operations goes on with the others.
func TestListOperationsSkipsCorruptRecord(t *testing.T) {
	s, _ := openTemp(t)
	good := &api.Operation{ID: "good", Status: api.OpSuccess, CreatedAt: time.Now()}
	if err := s.PutOperation(good); err != nil {
		t.Fatal(err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOperations).Put([]byte("torn"), []byte(`{"id":"torn","status":`))
	})
	if err != nil {
		t.Fatal(err)
	}
	ops, err := s.ListOperations()
	if err != nil {
		t.Fatalf("list with a corrupt record: %v", err)
	}
	if len(ops) != 1 || ops[0].ID != "good" {
		t.Fatalf("want only the good operation, got %+v", ops)
	}
	if _, err := s.GetOperation("torn"); err == nil {
		t.Fatal("get of the corrupt record: want an error")
	}
}

// Each instance record has a copy beside the state file that outlives it: written on create and
// update, gone on delete; an unreadable copy is skipped.
func TestInstanceRecordCopies(t *testing.T) {
	s, path := openTemp(t)
	if err := s.CreateInstance(&InstanceRecord{Name: "c1", Desired: DesiredState{Power: "stopped"}}); err != nil {
		t.Fatal(err)
	}
	s.UpdateInstance("c1", func(r *InstanceRecord) error { r.Desired.Power = "running"; return nil })
	s.CreateInstance(&InstanceRecord{Name: "c2"})
	s.DeleteInstance("c2")
	os.WriteFile(filepath.Join(filepath.Dir(path), "instance-records", "bad.json"), []byte("{"), 0o600)
	s.Close()
	os.Remove(path) // the state file is lost

	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	recs, err := s2.BackupRecords()
	if err != nil || len(recs) != 1 || recs[0].Name != "c1" || recs[0].Desired.Power != "running" {
		t.Fatalf("copies %+v %v", recs, err)
	}
}
