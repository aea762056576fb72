package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Recover makes every pool and volume whole after a crash or a reboot. Call it once at daemon
// start, before instances are recovered; calling it again is harmless. It
//   - re-mounts btrfs pools on loop files,
//   - undoes a pool create and finishes a pool delete that were cut short,
//   - for each volume operation this host left unfinished: removes a half-made volume (create,
//     copy) or snapshot, finishes a delete, completes a restore's swap, re-runs a resize,
//   - removes this host's stale scratch directories and read-only helper mounts.
//
// Operations of other hosts on a shared pool are theirs to recover.
func (m *Manager) Recover(ctx context.Context) error {
	m.mu.Lock()
	var pools []Pool
	for _, p := range m.pools {
		pools = append(pools, *p)
	}
	m.mu.Unlock()
	var errs []error
	for i := range pools {
		p := &pools[i]
		drv := m.drivers[p.Driver]
		var err error
		switch p.State {
		case StateCreating:
			err = m.destroyPool(ctx, p, drv, m.joined(p))
		case StateDeleting:
			if err = drv.mountPool(ctx, p); err == nil {
				err = m.destroyPool(ctx, p, drv, true)
			}
		default:
			if err = drv.mountPool(ctx, p); err != nil {
				break
			}
			if err = securePrivate(p.Path); err != nil {
				break
			}
			if why := m.poolProblem(p, drv); why != "" {
				m.log.Warn("storage pool unavailable", "pool", p.Name, "why", why)
				continue
			}
			err = m.recoverVolumes(ctx, p, drv)
		}
		if err != nil {
			errs = append(errs, err)
			m.log.Error("recover storage pool", "pool", p.Name, "err", err)
		}
	}
	helpers, _ := filepath.Glob(filepath.Join(m.dir, "pools", ".ro-*"))
	for _, at := range helpers {
		if err := loopUnmount(ctx, at); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// joined tells whether the pool's identity names this host (so a cut-short create wrote it).
func (m *Manager) joined(p *Pool) bool {
	var id identity
	return readJSON(identityPath(p.Path), &id) == nil && slices.Contains(id.Hosts, m.host)
}

func (m *Manager) recoverVolumes(ctx context.Context, p *Pool, drv poolDriver) error {
	recs, err := m.listRecords(p)
	if err != nil {
		return err
	}
	var errs []error
	for _, v := range recs {
		o := v.Pending
		if o == nil || o.Host != m.host || m.isActive(o.ID) {
			continue
		}
		m.log.Info("finish an interrupted volume operation", "pool", p.Name, "volume", v.Ref(), "op", o.Op, "since", o.Started)
		if err := m.recoverVolume(ctx, p, drv, v, o); err != nil {
			errs = append(errs, err)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(p.Path, "tmp"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), m.hostTag+"-") && !m.isActive(e.Name()) {
			if err := removeScratch(ctx, drv, tmpPath(p.Path, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) recoverVolume(ctx context.Context, p *Pool, drv poolDriver, v *Volume, o *Operation) error {
	switch {
	case v.State == StateCreating || v.State == StateDeleting:
		if err := m.purge(ctx, p, drv, v); err != nil {
			return err
		}
		if v.Base != "" {
			return m.gcImage(ctx, p, drv, v.Base)
		}
		return nil
	case o.Op == "snapshot":
		if dir := snapPath(p.Path, v.Type, v.Name, o.Snapshot); exists(dir) && !hasSnapshot(v, o.Snapshot) {
			if err := drv.removeDir(ctx, dir); err != nil {
				return err
			}
		}
	case o.Op == "delete-snapshot":
		return m.finishDeleteSnapshot(ctx, p, drv, v.Type, v.Name, o)
	case o.Op == "restore":
		swapped, err := m.settleRestore(ctx, p, drv, v, o)
		if err != nil {
			return err
		}
		if i := slices.IndexFunc(v.Snapshots, func(s Snapshot) bool { return s.Name == o.Snapshot }); swapped && i >= 0 {
			size := v.Snapshots[i].Size
			return m.finish(ctx, p, v.Type, v.Name, o, func(r *Volume) { r.Size = size })
		}
	case o.Op == "resize":
		if err := m.resize(ctx, p, drv, v, o.Size, nil); err != nil {
			m.log.Warn("re-run an interrupted resize", "volume", v.Ref(), "err", err)
			break
		}
		return m.finish(ctx, p, v.Type, v.Name, o, func(r *Volume) { r.Size = o.Size })
	}
	return m.finish(ctx, p, v.Type, v.Name, o, nil)
}

// removeScratch removes an operation's scratch directory, subvolumes inside it included.
func removeScratch(ctx context.Context, drv poolDriver, dir string) error {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if err := drv.removeDir(ctx, filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return removeTree(dir)
}
