// Package store keeps one host's state in an embedded bbolt file. Every write is one bbolt transaction,
// so a crash at any point leaves the previous or the next state, never a mix.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

var (
	bucketMeta       = []byte("meta")
	bucketInstances  = []byte("instances")
	bucketOperations = []byte("operations")
	keySchema        = []byte("schema_version")
)

// InstanceRecord is everything the daemon keeps about one instance. Desired state (what the user asked)
// is kept apart from Observed state (what the driver last reported).
type InstanceRecord struct {
	Name      string         `json:"name"`
	Type      string         `json:"type"`
	Image     string         `json:"image"`
	CreatedAt time.Time      `json:"created_at"`
	Desired   DesiredState   `json:"desired"`
	Observed  ObservedState  `json:"observed"`
	Handle    *driver.Handle `json:"handle,omitempty"`
	// Pending names a multi-step change under way ("creating", "deleting"): if the daemon dies during
	// it, recovery rolls a create back and finishes a delete.
	Pending string `json:"pending,omitempty"`
	// PausedBy says the instance was paused by tandem itself, not by the user ("snapshot": a
	// snapshot pauses it while the disk is copied). Recovery resumes such a pause a crash left.
	PausedBy string `json:"paused_by,omitempty"`
}

// PausedBy values.
const PausedBySnapshot = "snapshot"

// Pending values.
const (
	PendingCreate = "creating"
	PendingDelete = "deleting"
)

// DesiredState is what the user asked for.
type DesiredState struct {
	Power   string                       `json:"power"`
	Config  map[string]string            `json:"config"`
	Devices map[string]map[string]string `json:"devices"`
}

// ObservedState is what the driver reported, and when.
type ObservedState struct {
	Status string    `json:"status"`
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"at"`
}

// Store is a bbolt-backed state file.
type Store struct {
	db         *bolt.DB
	backups    string   // the instance records' copies (backup.go)
	corruptOps sync.Map // keys of undecodable operation records already logged
}

// Open opens (creating if needed) the state file at path and migrates it to the current schema.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("state file %s is locked: is another tandemd using this dir?", path)
		}
		return nil, fmt.Errorf("open state file: %w", err)
	}
	if err := db.Update(migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate state file %s: %w", path, err)
	}
	return &Store{db: db, backups: backupDir(path)}, nil
}

// Close closes the state file.
func (s *Store) Close() error { return s.db.Close() }

// SchemaVersion returns the schema version the file is at.
func (s *Store) SchemaVersion() (int, error) {
	var v int
	err := s.db.View(func(tx *bolt.Tx) error {
		v = schemaVersion(tx)
		return nil
	})
	return v, err
}

// CreateInstance stores a new instance; it fails with ErrAlreadyExists if the name is taken.
func (s *Store) CreateInstance(rec *InstanceRecord) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInstances)
		if b.Get([]byte(rec.Name)) != nil {
			return errdefs.Exists("instance %q already exists", rec.Name)
		}
		return putJSON(b, rec.Name, rec)
	})
	if err == nil {
		s.backup(rec)
	}
	return err
}

// GetInstance returns one instance or ErrNotFound.
func (s *Store) GetInstance(name string) (*InstanceRecord, error) {
	var rec *InstanceRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rec, err = getInstance(tx, name)
		return err
	})
	return rec, err
}

// ListInstances returns all instances sorted by name.
func (s *Store) ListInstances() ([]*InstanceRecord, error) {
	var out []*InstanceRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketInstances).ForEach(func(k, v []byte) error {
			rec := &InstanceRecord{}
			if err := json.Unmarshal(v, rec); err != nil {
				return fmt.Errorf("decode instance %q: %w", k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// UpdateInstance reads, changes and writes one instance in a single transaction. If fn returns an
// error nothing is written.
func (s *Store) UpdateInstance(name string, fn func(*InstanceRecord) error) (*InstanceRecord, error) {
	var rec *InstanceRecord
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if rec, err = getInstance(tx, name); err != nil {
			return err
		}
		if err := fn(rec); err != nil {
			return err
		}
		if rec.Name != name {
			return errdefs.Invalid("an update cannot rename instance %q", name)
		}
		return putJSON(tx.Bucket(bucketInstances), name, rec)
	})
	if err != nil {
		return nil, err
	}
	s.backup(rec)
	return rec, nil
}

// DeleteInstance removes an instance; ErrNotFound if it is not there.
func (s *Store) DeleteInstance(name string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketInstances)
		if b.Get([]byte(name)) == nil {
			return errdefs.NotFound("instance %q not found", name)
		}
		return b.Delete([]byte(name))
	})
	if err == nil {
		s.dropBackup(name)
	}
	return err
}

// PutOperation creates or replaces an operation record.
func (s *Store) PutOperation(op *api.Operation) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(bucketOperations), op.ID, op)
	})
}

// GetOperation returns one operation or ErrNotFound.
func (s *Store) GetOperation(id string) (*api.Operation, error) {
	op := &api.Operation{}
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketOperations).Get([]byte(id))
		if v == nil {
			return errdefs.NotFound("operation %q not found", id)
		}
		return json.Unmarshal(v, op)
	})
	if err != nil {
		return nil, err
	}
	return op, nil
}

// ListOperations returns all stored operations, oldest first. A record that does not decode is
// skipped and logged (once per process): an operation is history, and one torn record must not stop
// the daemon from starting or listing the others.
func (s *Store) ListOperations() ([]*api.Operation, error) {
	var out []*api.Operation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOperations).ForEach(func(k, v []byte) error {
			op := &api.Operation{}
			if err := json.Unmarshal(v, op); err != nil {
				if _, seen := s.corruptOps.LoadOrStore(string(k), true); !seen {
					slog.Warn("skipping an operation record that does not decode", "op", string(k), "err", err)
				}
				return nil
			}
			out = append(out, op)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, err
}

// DeleteOperation removes an operation record.
func (s *Store) DeleteOperation(id string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOperations).Delete([]byte(id))
	})
}

func getInstance(tx *bolt.Tx, name string) (*InstanceRecord, error) {
	v := tx.Bucket(bucketInstances).Get([]byte(name))
	if v == nil {
		return nil, errdefs.NotFound("instance %q not found", name)
	}
	rec := &InstanceRecord{}
	if err := json.Unmarshal(v, rec); err != nil {
		return nil, fmt.Errorf("decode instance %q: %w", name, err)
	}
	return rec, nil
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// Exists reports whether a state file is at path (used to tell a first start from a restart).
func Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
