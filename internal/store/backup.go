package store

import (
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"tandem/internal/fsutil"
)

// Every instance record is also kept as a file of its own beside the state file
// (instance-records/NAME.json), written after each committed change. The state file stays the
// truth; the copies let `tandemd --recover` re-adopt the guests that still run when the state file
// itself is lost or replaced (Incus keeps a backup.yaml per instance for its `admin recover`).

func backupDir(statePath string) string {
	return filepath.Join(filepath.Dir(statePath), "instance-records")
}

// backup writes rec's copy; a failure is logged, never the write's failure.
func (s *Store) backup(rec *InstanceRecord) {
	data, err := json.Marshal(rec)
	if err == nil {
		if err = os.MkdirAll(s.backups, 0o700); err == nil {
			err = fsutil.WriteFileAtomic(filepath.Join(s.backups, rec.Name+".json"), data, 0o600)
		}
	}
	if err != nil {
		slog.Warn("keep a copy of the instance record", "instance", rec.Name, "err", err)
	}
}

func (s *Store) dropBackup(name string) {
	if err := os.Remove(filepath.Join(s.backups, name+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		slog.Warn("remove the copy of a deleted instance's record", "instance", name, "err", err)
	}
}

// BackupRecords returns the instance records' copies; one that does not decode is skipped and
// logged.
func (s *Store) BackupRecords() ([]*InstanceRecord, error) {
	ents, err := os.ReadDir(s.backups)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []*InstanceRecord
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.backups, e.Name()))
		rec := &InstanceRecord{}
		if err == nil {
			err = json.Unmarshal(data, rec)
		}
		if err != nil || rec.Name != name {
			slog.Warn("skipping an instance record copy that does not read", "file", e.Name(), "err", err)
			continue
		}
		out = append(out, rec)
	}
	return out, nil
}
