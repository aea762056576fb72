package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"tandem/internal/errdefs"
)

// A volume's record is its journal: a create writes it (state creating, with a Pending operation)
// before touching any data, every multi-step change sets Pending first and clears it last, and a
// delete sets state deleting before removing anything. Recover reads Pending to finish or undo.

// readVolume loads a volume's record by ref ("NAME" or "TYPE/NAME").
func (m *Manager) readVolume(p *Pool, ref string) (*Volume, error) {
	typ, name, err := parseRef(ref)
	if err != nil {
		return nil, err
	}
	return m.loadRecord(p, typ, name)
}

func (m *Manager) loadRecord(p *Pool, typ, name string) (*Volume, error) {
	var v Volume
	if err := readJSON(recordPath(p.Path, typ, name), &v); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errdefs.NotFound("volume %s/%s not found in pool %q", typ, name, p.Name)
		}
		return nil, err
	}
	v.Pool = p.Name
	return &v, nil
}

func (m *Manager) saveRecord(p *Pool, v *Volume) error {
	rec := *v
	rec.Pool, rec.Usage = "", 0
	return writeJSON(recordPath(p.Path, v.Type, v.Name), &rec)
}

// lockVolume takes a volume's record lock; it is held only for a read-modify-write.
func (m *Manager) lockVolume(ctx context.Context, p *Pool, typ, name string) (func(), error) {
	return lockPath(ctx, lockBase(p.Path, typ, name)+".meta")
}

// update applies fn to a volume's record under its lock and saves it when fn succeeds.
func (m *Manager) update(ctx context.Context, p *Pool, typ, name string, fn func(v *Volume) error) (*Volume, error) {
	unlock, err := m.lockVolume(ctx, p, typ, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := m.loadRecord(p, typ, name)
	if err != nil {
		return nil, err
	}
	if err := fn(v); err != nil {
		return nil, err
	}
	return v, m.saveRecord(p, v)
}

// createRecord writes a new volume's first record, refusing a name that is taken.
func (m *Manager) createRecord(ctx context.Context, p *Pool, v *Volume) error {
	unlock, err := m.lockVolume(ctx, p, v.Type, v.Name)
	if err != nil {
		return err
	}
	defer unlock()
	return m.createRecordLocked(p, v)
}

func (m *Manager) createRecordLocked(p *Pool, v *Volume) error {
	if exists(recordPath(p.Path, v.Type, v.Name)) {
		return errdefs.Exists("volume %s already exists in pool %q", v.Ref(), p.Name)
	}
	return m.saveRecord(p, v)
}

// begin marks a ready volume busy with op, after check (if any) accepts it.
func (m *Manager) begin(ctx context.Context, p *Pool, typ, name string, op *Operation, check func(v *Volume) error) (*Volume, error) {
	return m.update(ctx, p, typ, name, func(v *Volume) error {
		if err := busy(p, v); err != nil {
			return err
		}
		if check != nil {
			if err := check(v); err != nil {
				return err
			}
		}
		v.Pending = op
		return nil
	})
}

// finish clears op from a volume's record after applying fn, even when the caller's ctx is done.
func (m *Manager) finish(ctx context.Context, p *Pool, typ, name string, op *Operation, fn func(v *Volume)) error {
	ctx, cancel := bg(ctx)
	defer cancel()
	_, err := m.update(ctx, p, typ, name, func(v *Volume) error {
		if v.Pending != nil && v.Pending.ID == op.ID {
			v.Pending = nil
		}
		if fn != nil {
			fn(v)
		}
		return nil
	})
	return err
}

// busy refuses a volume that is not ready or has an operation under way.
func busy(p *Pool, v *Volume) error {
	if v.State != StateReady {
		return errdefs.Conflict("volume %s in pool %q is %s", v.Ref(), p.Name, v.State)
	}
	if o := v.Pending; o != nil {
		return errdefs.Conflict("volume %s in pool %q is busy: %s by host %s since %s", v.Ref(), p.Name, o.Op, o.Host,
			o.Started.Format("15:04:05"))
	}
	return nil
}

// removeVolumeFiles removes a volume's record and lock files (its data must be gone already).
func (m *Manager) removeVolumeFiles(p *Pool, typ, name string) error {
	if err := removeIfExists(recordPath(p.Path, typ, name)); err != nil {
		return err
	}
	base := lockBase(p.Path, typ, name)
	for _, ext := range []string{".lock", ".lease", ".meta"} {
		if err := removeIfExists(base + ext); err != nil {
			return err
		}
	}
	return nil
}

// listRecords loads every volume record of a pool, sorted by type and name.
func (m *Manager) listRecords(p *Pool) ([]*Volume, error) {
	var out []*Volume
	for _, t := range volumeTypes {
		ents, err := os.ReadDir(filepath.Join(p.Path, "meta", t))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return nil, err
		}
		for _, e := range ents {
			name, ok := strings.CutSuffix(e.Name(), ".json")
			if !ok {
				continue
			}
			v, err := m.loadRecord(p, t, name)
			if err != nil {
				if errors.Is(err, errdefs.ErrNotFound) { // deleted while we listed
					continue
				}
				return nil, err
			}
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ref() < out[j].Ref() })
	return out, nil
}

func usersOf(v *Volume) string {
	var s []string
	for _, a := range v.UsedBy {
		d := a.Instance
		if a.Host != "" {
			d += " on " + a.Host
		}
		if a.ReadOnly {
			d += " (read-only)"
		}
		s = append(s, d)
	}
	return strings.Join(s, ", ")
}
