package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"tandem/internal/errdefs"
)

// DefaultPool is the name of the pool EnsureDefault makes.
const DefaultPool = "default"

// EnsureDefault makes the default dir pool (under Dir) unless it exists.
func (m *Manager) EnsureDefault(ctx context.Context) (*Pool, error) {
	if p, err := m.GetPool(ctx, DefaultPool); err == nil {
		return p, nil
	}
	p, err := m.CreatePool(ctx, PoolConfig{Name: DefaultPool, Driver: DriverDir})
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		return m.GetPool(ctx, DefaultPool)
	}
	return p, err
}

// CreatePool makes a pool (or, for a shared path another host made a pool on, joins it).
func (m *Manager) CreatePool(ctx context.Context, cfg PoolConfig) (*Pool, error) {
	p, err := m.planPool(cfg)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	if _, ok := m.pools[p.Name]; ok {
		m.mu.Unlock()
		return nil, errdefs.Exists("storage pool %q already exists", p.Name)
	}
	for _, o := range m.pools {
		if overlaps(o.Path, p.Path) {
			m.mu.Unlock()
			return nil, errdefs.Conflict("storage pool %q already uses %s", o.Name, o.Path)
		}
	}
	m.pools[p.Name] = p
	m.mu.Unlock()

	drv := m.drivers[p.Driver]
	if err := m.savePool(p); err != nil {
		m.forgetPool(p.Name)
		return nil, err
	}
	if err := drv.initPool(ctx, p); err != nil { // a driver cleans up its own partial work
		m.forgetPool(p.Name)
		return nil, fmt.Errorf("create pool %q: %w", p.Name, err)
	}
	touched, err := m.writeIdentity(ctx, p)
	if err == nil {
		p.State = StateReady
		err = m.savePool(p)
	}
	if err != nil {
		cctx, cancel := bg(ctx)
		defer cancel()
		if cerr := m.destroyPool(cctx, p, drv, touched); cerr != nil {
			m.log.Error("roll back a failed pool create", "pool", p.Name, "err", cerr)
			return nil, fmt.Errorf("create pool %q: %w (and its roll-back failed: %v; Recover retries)", p.Name, err, cerr)
		}
		return nil, fmt.Errorf("create pool %q: %w", p.Name, err)
	}
	return m.GetPool(ctx, p.Name)
}

func (m *Manager) forgetPool(name string) {
	removeIfExists(m.poolRecordPath(name))
	m.mu.Lock()
	delete(m.pools, name)
	m.mu.Unlock()
}

// planPool validates a config and works out where the pool lives.
func (m *Manager) planPool(cfg PoolConfig) (*Pool, error) {
	if err := ValidatePoolName(cfg.Name); err != nil {
		return nil, err
	}
	p := &Pool{Name: cfg.Name, Driver: cfg.Driver, Source: cfg.Source, Size: cfg.Size, State: StateCreating,
		CreatedAt: time.Now().UTC()}
	if cfg.Source != "" {
		if !filepath.IsAbs(cfg.Source) {
			return nil, errdefs.Invalid("pool source %q must be an absolute path", cfg.Source)
		}
		p.Path = filepath.Clean(cfg.Source)
	}
	switch cfg.Driver {
	case DriverDir, DriverShared:
		if cfg.Size != 0 {
			return nil, errdefs.Invalid("a %s pool takes no size: it uses the space of its filesystem", cfg.Driver)
		}
		if cfg.Driver == DriverShared && cfg.Source == "" {
			return nil, errdefs.Invalid("a shared pool needs a source: the mount point of the shared filesystem")
		}
		if p.Path == "" {
			p.Path = filepath.Join(m.dir, "pools", p.Name)
		}
	case DriverBtrfs:
		switch {
		case cfg.Source != "" && cfg.Size != 0:
			return nil, errdefs.Invalid("a btrfs pool takes a source (an existing btrfs mount) or a size (a loop file), not both")
		case cfg.Source == "" && cfg.Size == 0:
			return nil, errdefs.Invalid("a btrfs pool needs a source (an existing btrfs mount) or a size (for a loop file)")
		case cfg.Source == "":
			if cfg.Size > MaxSize {
				return nil, checkSize(cfg.Size)
			}
			p.LoopFile = filepath.Join(m.dir, "loop", p.Name+".img")
			p.Path = filepath.Join(m.dir, "pools", p.Name)
		}
	default:
		return nil, errdefs.Invalid("unknown pool driver %q (dir, btrfs, shared)", cfg.Driver)
	}
	return p, nil
}

func overlaps(a, b string) bool {
	return a == b || strings.HasPrefix(a, b+string(filepath.Separator)) || strings.HasPrefix(b, a+string(filepath.Separator))
}

// writeIdentity writes the skeleton and identity into a new pool's root, or joins this host to a
// shared pool another host made; touched says whether anything of ours was written.
func (m *Manager) writeIdentity(ctx context.Context, p *Pool) (touched bool, err error) {
	unlock, err := lockPath(ctx, filepath.Join(p.Path, ".tandem-pool.lock"))
	if err != nil {
		return false, err
	}
	defer unlock()
	var id identity
	if err := readJSON(identityPath(p.Path), &id); err == nil {
		if p.Driver != DriverShared || id.Driver != DriverShared {
			return false, errdefs.Conflict("%s already holds tandem pool %q (%s)", p.Path, id.Name, id.Driver)
		}
		if !slices.Contains(id.Hosts, m.host) {
			id.Hosts = append(id.Hosts, m.host)
		}
		if err := makeSkeleton(p.Path); err != nil {
			return false, err
		}
		return true, writeJSON(identityPath(p.Path), &id)
	}
	ents, err := os.ReadDir(p.Path)
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		if n := e.Name(); n != "lost+found" && n != ".tandem-pool.lock" {
			return false, errdefs.Invalid("pool source %s is not empty (it holds %s)", p.Path, n)
		}
	}
	if err := makeSkeleton(p.Path); err != nil {
		return true, err
	}
	return true, writeJSON(identityPath(p.Path), &identity{Name: p.Name, Driver: p.Driver, CreatedAt: p.CreatedAt, Hosts: []string{m.host}})
}

// destroyPool takes this host out of the pool (leave: its skeleton goes when no other host joined
// it), then removes whatever the driver made, then the record.
func (m *Manager) destroyPool(ctx context.Context, p *Pool, drv poolDriver, leave bool) error {
	if leave && drv.check(p) == nil {
		if err := m.leavePool(ctx, p); err != nil {
			return err
		}
	}
	if err := drv.destroyPool(ctx, p); err != nil {
		return err
	}
	if err := removeIfExists(m.poolRecordPath(p.Name)); err != nil {
		return err
	}
	m.forgetPool(p.Name)
	return nil
}

func (m *Manager) leavePool(ctx context.Context, p *Pool) error {
	lockFile := filepath.Join(p.Path, ".tandem-pool.lock")
	if !exists(identityPath(p.Path)) {
		return removeIfExists(lockFile)
	}
	unlock, err := lockPath(ctx, lockFile)
	if err != nil {
		return err
	}
	defer unlock()
	var id identity
	if err := readJSON(identityPath(p.Path), &id); err != nil {
		return err
	}
	if id.Hosts = slices.DeleteFunc(id.Hosts, func(h string) bool { return h == m.host }); len(id.Hosts) > 0 {
		return writeJSON(identityPath(p.Path), &id)
	}
	if err := removeSkeleton(p.Path); err != nil {
		return err
	}
	return removeIfExists(lockFile)
}

// DeletePool removes a pool. It is refused while the pool holds volumes (image copies nobody uses
// go with it). On a shared pool that other hosts joined, only this host leaves, and only volumes
// attached on this host stand in the way.
func (m *Manager) DeletePool(ctx context.Context, name string) error {
	p, drv, err := m.usablePool(name)
	if err != nil {
		return err
	}
	vols, err := m.listRecords(p)
	if err != nil {
		return err
	}
	var id identity
	readJSON(identityPath(p.Path), &id)
	othersJoined := p.Driver == DriverShared && slices.ContainsFunc(id.Hosts, func(h string) bool { return h != m.host })
	var left []string
	for _, v := range vols {
		if othersJoined {
			if slices.ContainsFunc(v.UsedBy, func(a Attachment) bool { return a.Host == m.host }) {
				left = append(left, v.Ref()+" (used by "+usersOf(v)+")")
			}
			continue
		}
		if v.Type == TypeImage && m.gcImage(ctx, p, drv, v.Name) == nil && !exists(recordPath(p.Path, v.Type, v.Name)) {
			continue
		}
		left = append(left, v.Ref())
	}
	if len(left) > 0 {
		sort.Strings(left)
		return errdefs.Conflict("storage pool %q still has %d volumes: %s", name, len(left), strings.Join(left, ", "))
	}
	m.mu.Lock()
	rec := m.pools[name]
	if rec == nil {
		m.mu.Unlock()
		return errdefs.NotFound("storage pool %q not found", name)
	}
	rec.State = StateDeleting
	m.mu.Unlock()
	if err := m.savePool(rec); err != nil {
		return err
	}
	p.State = StateDeleting
	return m.destroyPool(ctx, p, drv, true)
}

// GetPool returns a pool with its space figures and status.
func (m *Manager) GetPool(_ context.Context, name string) (*Pool, error) {
	if err := ValidatePoolName(name); err != nil {
		return nil, err
	}
	m.mu.Lock()
	rec := m.pools[name]
	m.mu.Unlock()
	if rec == nil {
		return nil, errdefs.NotFound("storage pool %q not found", name)
	}
	p := *rec
	p.Status = "ok"
	if why := m.poolProblem(&p, m.drivers[p.Driver]); why != "" {
		p.Status = "unavailable: " + why
	} else if t, u, f, err := statfs(p.Path); err == nil {
		p.Total, p.Used, p.Free = t, u, f
	}
	if p.State != StateReady {
		p.Status = p.State
	}
	return &p, nil
}

// ListPools returns every pool, sorted by name.
func (m *Manager) ListPools(ctx context.Context) ([]Pool, error) {
	m.mu.Lock()
	names := make([]string, 0, len(m.pools))
	for n := range m.pools {
		names = append(names, n)
	}
	m.mu.Unlock()
	sort.Strings(names)
	var out []Pool
	for _, n := range names {
		if p, err := m.GetPool(ctx, n); err == nil {
			out = append(out, *p)
		}
	}
	return out, nil
}
