package store

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"tandem/internal/driver"
)

// migrations[i] takes the schema from version i to i+1. They all run in the one transaction that opens
// the file, so a crash half-way through leaves the file at its old version.
var migrations = []func(*bolt.Tx) error{
	migrateCreateV1,
	migrateSplitDesiredObservedV2,
	migrateRemotesAndTokensV3,
}

// CurrentSchema is the schema version this build writes.
var CurrentSchema = len(migrations)

func migrate(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return err
	}
	v := schemaVersion(tx)
	if v > CurrentSchema {
		return fmt.Errorf("state file has schema %d, newer than this tandemd understands (%d)", v, CurrentSchema)
	}
	for ; v < CurrentSchema; v++ {
		if err := migrations[v](tx); err != nil {
			return fmt.Errorf("schema %d to %d: %w", v, v+1, err)
		}
		if err := meta.Put(keySchema, []byte(strconv.Itoa(v+1))); err != nil {
			return err
		}
	}
	return nil
}

func schemaVersion(tx *bolt.Tx) int {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return 0
	}
	v, err := strconv.Atoi(string(meta.Get(keySchema)))
	if err != nil {
		return 0
	}
	return v
}

// Version 1: instances only, with a single "state" field mixing what was asked and what was seen.
func migrateCreateV1(tx *bolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketInstances)
	return err
}

// instanceV1 is the record layout of schema 1.
type instanceV1 struct {
	Name      string                       `json:"name"`
	Type      string                       `json:"type"`
	Image     string                       `json:"image"`
	Config    map[string]string            `json:"config"`
	Devices   map[string]map[string]string `json:"devices"`
	State     string                       `json:"state"` // "running" | "stopped"
	CreatedAt time.Time                    `json:"created_at"`
	Handle    *driver.Handle               `json:"handle,omitempty"`
}

// Version 2: desired state split from observed state, and persisted operations. The old "state" is what
// the user last asked for; nothing has been observed yet, the daemon fills that in at recovery.
func migrateSplitDesiredObservedV2(tx *bolt.Tx) error {
	if _, err := tx.CreateBucketIfNotExists(bucketOperations); err != nil {
		return err
	}
	b := tx.Bucket(bucketInstances)
	updated := map[string][]byte{}
	err := b.ForEach(func(k, v []byte) error {
		old := instanceV1{}
		if err := json.Unmarshal(v, &old); err != nil {
			return fmt.Errorf("decode instance %q: %w", k, err)
		}
		power := old.State
		if power != "running" {
			power = "stopped"
		}
		rec := InstanceRecord{
			Name: old.Name, Type: old.Type, Image: old.Image, CreatedAt: old.CreatedAt, Handle: old.Handle,
			Desired:  DesiredState{Power: power, Config: old.Config, Devices: old.Devices},
			Observed: ObservedState{Status: "Unknown"},
		}
		data, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		updated[string(k)] = data
		return nil
	})
	if err != nil {
		return err
	}
	// bbolt forbids writes during ForEach; apply after.
	for k, v := range updated {
		if err := b.Put([]byte(k), v); err != nil {
			return err
		}
	}
	return nil
}

// Version 3: remotes this host trusts to call, and one-time join tokens it has issued.
func migrateRemotesAndTokensV3(tx *bolt.Tx) error {
	for _, b := range [][]byte{bucketRemotes, bucketTokens} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return nil
}
