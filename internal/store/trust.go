package store

import (
	"encoding/json"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"

	"tandem/internal/errdefs"
)

var (
	bucketRemotes = []byte("remotes")
	bucketTokens  = []byte("trust_tokens")
)

// Remote is another tandem host this one calls, pinned by its certificate fingerprint.
type Remote struct {
	Name        string    `json:"name"`
	URL         string    `json:"url"`
	Fingerprint string    `json:"fingerprint"`
	AddedAt     time.Time `json:"added_at"`
}

// Token is a one-time join secret this host issued; only its hash is kept.
type Token struct {
	ID         string    `json:"id"`
	SecretHash string    `json:"secret_hash"`
	Name       string    `json:"name"` // what the joining client will be called
	ExpiresAt  time.Time `json:"expires_at"`
}

// PutRemote adds or replaces a remote.
func (s *Store) PutRemote(r *Remote) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bucketRemotes), r.Name, r) })
}

// GetRemote returns a remote by name.
func (s *Store) GetRemote(name string) (*Remote, error) {
	r := &Remote{}
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRemotes).Get([]byte(name))
		if v == nil {
			return errdefs.NotFound("remote %q not found", name)
		}
		return json.Unmarshal(v, r)
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// ListRemotes returns the remotes by name.
func (s *Store) ListRemotes() ([]*Remote, error) {
	var out []*Remote
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRemotes).ForEach(func(k, v []byte) error {
			r := &Remote{}
			if err := json.Unmarshal(v, r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// DeleteRemote forgets a remote.
func (s *Store) DeleteRemote(name string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRemotes)
		if b.Get([]byte(name)) == nil {
			return errdefs.NotFound("remote %q not found", name)
		}
		return b.Delete([]byte(name))
	})
}

// PutToken records an issued token.
func (s *Store) PutToken(t *Token) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bucketTokens), t.ID, t) })
}

// TakeToken finds the unexpired token whose secret hashes to secretHash, deletes it and returns it,
// in one transaction: a token works once even under concurrent joins. Expired tokens are pruned.
func (s *Store) TakeToken(secretHash string, now time.Time) (*Token, error) {
	var found *Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		var drop [][]byte
		err := b.ForEach(func(k, v []byte) error {
			t := &Token{}
			if json.Unmarshal(v, t) != nil || now.After(t.ExpiresAt) {
				drop = append(drop, k)
				return nil
			}
			if t.SecretHash == secretHash {
				found = t
				drop = append(drop, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, errdefs.NotFound("the token is unknown, used or expired")
	}
	return found, nil
}

// ListTokens returns the pending tokens.
func (s *Store) ListTokens() ([]*Token, error) {
	var out []*Token
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			t := &Token{}
			if err := json.Unmarshal(v, t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	return out, err
}
