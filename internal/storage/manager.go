package storage

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// Manager owns this host's pools and the volumes in them. It is safe for concurrent use; volume
// records are guarded by file locks inside the pool, so several hosts can share a pool.
type Manager struct {
	dir     string
	host    string
	hostTag string // short hash of host, prefixes operation ids so Recover knows its own tmp dirs
	ttl     time.Duration
	minFree uint64 // Options.MinFreeForVM
	log     *slog.Logger
	drivers map[string]poolDriver

	mu     sync.Mutex
	pools  map[string]*Pool
	active map[string]bool      // ids of operations running in this process
	mounts map[string]*mountRef // pool/ref -> a volume handed out by MountVolume

	mountMu sync.Mutex // serialises mount and umount

	leaseMu sync.Mutex
	leases  map[string]*heldLease // pool/ref -> a lease this process holds
}

// NewManager loads the pool records under opts.Dir.
func NewManager(opts Options) (*Manager, error) {
	if opts.Dir == "" || !filepath.IsAbs(opts.Dir) {
		return nil, errdefs.Invalid("storage dir %q must be an absolute path", opts.Dir)
	}
	if opts.HostID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, errdefs.Invalid("storage needs a host id: %v", err)
		}
		opts.HostID = h
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MinFreeForVM == 0 {
		opts.MinFreeForVM = DefaultMinFreeForVM
	}
	sum := sha256.Sum256([]byte(opts.HostID))
	m := &Manager{
		dir: opts.Dir, host: opts.HostID, hostTag: hex.EncodeToString(sum[:4]), ttl: opts.LeaseTTL,
		minFree: opts.MinFreeForVM,
		log:     opts.Logger.With("component", "storage"),
		drivers: map[string]poolDriver{DriverDir: &plainDriver{}, DriverShared: &plainDriver{shared: true}, DriverBtrfs: &btrfsDriver{}},
		pools:   map[string]*Pool{}, active: map[string]bool{}, mounts: map[string]*mountRef{}, leases: map[string]*heldLease{},
	}
	for _, d := range []string{m.recordDir(), filepath.Join(m.dir, "pools")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, err
		}
	}
	// Volumes mounted for instances are host users' business no more than container roots are;
	// containers get them by bind mounts that runc or the driver open as root.
	if err := os.MkdirAll(filepath.Join(m.dir, "mounts"), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(filepath.Join(m.dir, "mounts"), 0o700); err != nil {
		return nil, err
	}
	if err := m.loadPools(); err != nil {
		return nil, err
	}
	return m, nil
}

// Close stops lease heartbeats. Leases are not released: instances outlive the daemon, and a
// restarted daemon takes its own leases back.
func (m *Manager) Close() error {
	m.leaseMu.Lock()
	defer m.leaseMu.Unlock()
	for _, l := range m.leases {
		l.stopHeartbeat()
	}
	return nil
}

// HostID is the id this manager writes into leases and attachments.
func (m *Manager) HostID() string { return m.host }

func (m *Manager) recordDir() string              { return filepath.Join(m.dir, "records") }
func (m *Manager) poolRecordPath(n string) string { return filepath.Join(m.recordDir(), n+".json") }

func (m *Manager) loadPools() error {
	ents, err := os.ReadDir(m.recordDir())
	if err != nil {
		return err
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		var p Pool
		if err := readJSON(filepath.Join(m.recordDir(), e.Name()), &p); err != nil {
			return fmt.Errorf("pool record %s: %w", e.Name(), err)
		}
		m.pools[p.Name] = &p
	}
	return nil
}

func (m *Manager) savePool(p *Pool) error {
	rec := *p
	rec.Total, rec.Used, rec.Free, rec.Status = 0, 0, 0, ""
	return writeJSON(m.poolRecordPath(p.Name), &rec)
}

// usablePool returns a ready pool and its driver, or why it cannot be used now.
func (m *Manager) usablePool(name string) (*Pool, poolDriver, error) {
	if err := ValidatePoolName(name); err != nil {
		return nil, nil, err
	}
	m.mu.Lock()
	p := m.pools[name]
	m.mu.Unlock()
	if p == nil {
		return nil, nil, errdefs.NotFound("storage pool %q not found", name)
	}
	if p.State != StateReady {
		return nil, nil, errdefs.Conflict("storage pool %q is %s", name, p.State)
	}
	drv := m.drivers[p.Driver]
	if why := m.poolProblem(p, drv); why != "" {
		return nil, nil, errdefs.Unavailable("storage pool %q cannot be used: %s", name, why)
	}
	cp := *p
	return &cp, drv, nil
}

// poolProblem says why a pool's root is unusable now ("" when it is fine).
func (m *Manager) poolProblem(p *Pool, drv poolDriver) string {
	if err := drv.check(p); err != nil {
		return err.Error()
	}
	if _, err := os.Stat(identityPath(p.Path)); err != nil {
		return fmt.Sprintf("%s holds no %s (not mounted?)", p.Path, identityFile)
	}
	return ""
}

// newOp starts an operation record owned by this process.
func (m *Manager) newOp(op string) *Operation {
	b := make([]byte, 6)
	rand.Read(b)
	o := &Operation{ID: m.hostTag + "-" + hex.EncodeToString(b), Op: op, Host: m.host, Started: time.Now().UTC()}
	m.mu.Lock()
	m.active[o.ID] = true
	m.mu.Unlock()
	return o
}

func (m *Manager) endOp(o *Operation) {
	m.mu.Lock()
	delete(m.active, o.ID)
	m.mu.Unlock()
}

func (m *Manager) isActive(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.active[id]
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(b, '\n'), 0o644)
}

// removeIfExists removes a file, treating "already gone" as success.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// bg is a context for clean-up that must run even when the caller's ctx has ended.
func bg(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
}
