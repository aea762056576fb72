package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
)

// Run-time exclusion, for shared pools above all: two hosts must never use one disk at once. The
// holder keeps an OFD lock on locks/TYPE/NAME.lock for as long as it uses the volume (the kernel,
// or the NFS/CephFS/GlusterFS server, drops it if the holder dies), and writes a lease file
// (.lease) naming host and holder with an expiry that a heartbeat pushes forward. The lease is
// what still protects the disk where file locks are not honoured (NFS mounted nolock or
// local_lock): another host's unexpired lease refuses an Acquire even when the lock was granted.
// Hosts' clocks must agree to well within the TTL (run NTP).
//
// Caveat: while tandemd is down its heartbeats stop, so after LeaseTTL another host could take a
// disk a still-running instance uses; QEMU's own image locks still guard VM disks where the
// filesystem honours locks.

type leaseRecord struct {
	Host     string    `json:"host"`
	Holder   string    `json:"holder"`
	Token    string    `json:"token"`
	Acquired time.Time `json:"acquired"`
	Expires  time.Time `json:"expires"`
}

type heldLease struct {
	holder, path string
	rec          leaseRecord
	f            *os.File
	count        int
	stop, done   chan struct{}
	stopOnce     sync.Once
}

// Acquire takes the volume for holder (an instance) until release is called. The same holder may
// acquire again (counted); anyone else, on this host or another, gets errdefs.Conflict naming the
// holder and its host.
func (m *Manager) Acquire(ctx context.Context, pool, vol, holder string) (release func() error, err error) {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return nil, err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return nil, err
	}
	if holder == "" {
		return nil, errdefs.Invalid("a lease needs a holder")
	}
	// The record lock orders Acquire against DeleteVolume and RestoreVolume, which check leases.
	unlock, err := m.lockVolume(ctx, p, typ, name)
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, err := m.loadRecord(p, typ, name)
	if err != nil {
		return nil, err
	}
	// A volume being restored, resized or copied is not to be used until that is done.
	if err := busy(p, v); err != nil {
		return nil, err
	}
	key := p.Name + "/" + v.Ref()
	m.leaseMu.Lock()
	defer m.leaseMu.Unlock()
	if h := m.leases[key]; h != nil {
		if h.holder != holder {
			return nil, errdefs.Conflict("volume %s is in use by %s on this host (%s)", v.Ref(), h.holder, m.host)
		}
		h.count++
		return m.releaseFunc(key, h), nil
	}
	base := lockBase(p.Path, typ, name)
	f, err := os.OpenFile(base+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := ofdLock(f, false); err != nil {
		if isLockBusy(err) {
			f.Close()
			return nil, inUse(v, readLease(base+".lease"))
		}
		if !errors.Is(err, unix.ENOLCK) && !errors.Is(err, unix.EOPNOTSUPP) {
			f.Close()
			return nil, err
		}
		m.log.Warn("no file locks on this pool: relying on leases alone", "pool", p.Name)
	}
	now := time.Now().UTC()
	if cur := readLease(base + ".lease"); cur != nil && cur.Host != m.host && now.Before(cur.Expires) {
		f.Close()
		return nil, inUse(v, cur)
	}
	tok := make([]byte, 8)
	rand.Read(tok)
	h := &heldLease{holder: holder, path: base + ".lease", f: f, count: 1, stop: make(chan struct{}), done: make(chan struct{}),
		rec: leaseRecord{Host: m.host, Holder: holder, Token: hex.EncodeToString(tok), Acquired: now, Expires: now.Add(m.ttl)}}
	if err := writeJSON(h.path, &h.rec); err != nil {
		f.Close()
		return nil, err
	}
	go m.heartbeat(key, h)
	m.leases[key] = h
	return m.releaseFunc(key, h), nil
}

func inUse(v *Volume, l *leaseRecord) error {
	if l == nil {
		return errdefs.Conflict("volume %s is in use by another process", v.Ref())
	}
	return errdefs.Conflict("volume %s is in use by %s on host %s (lease expires %s)", v.Ref(), l.Holder, l.Host,
		l.Expires.Local().Format("15:04:05"))
}

func readLease(path string) *leaseRecord {
	var l leaseRecord
	if readJSON(path, &l) != nil {
		return nil
	}
	return &l
}

// heartbeat keeps the lease alive until it is released or lost.
func (m *Manager) heartbeat(key string, h *heldLease) {
	defer close(h.done)
	t := time.NewTicker(m.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		if cur := readLease(h.path); cur != nil && cur.Token != h.rec.Token {
			m.log.Error("lost the lease on a volume: another host took it", "volume", key, "holder", h.holder)
			return
		}
		h.rec.Expires = time.Now().UTC().Add(m.ttl)
		if err := writeJSON(h.path, &h.rec); err != nil {
			m.log.Error("renew a volume lease", "volume", key, "err", err)
		}
	}
}

func (h *heldLease) stopHeartbeat() {
	h.stopOnce.Do(func() { close(h.stop) })
	<-h.done
}

func (m *Manager) releaseFunc(key string, h *heldLease) func() error {
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			m.leaseMu.Lock()
			defer m.leaseMu.Unlock()
			if h.count--; h.count > 0 {
				return
			}
			delete(m.leases, key)
			h.stopHeartbeat()
			if cur := readLease(h.path); cur != nil && cur.Token == h.rec.Token {
				err = removeIfExists(h.path)
			}
			if cerr := h.f.Close(); err == nil {
				err = cerr
			}
		})
		return err
	}
}

// currentLease is the lease that holds a volume now, or nil: none, expired, or left by an earlier
// run of this host's daemon (its lock died with it).
func (m *Manager) currentLease(p *Pool, typ, name string) *leaseRecord {
	base := lockBase(p.Path, typ, name)
	l := readLease(base + ".lease")
	if l == nil || time.Now().After(l.Expires) {
		return nil
	}
	if l.Host == m.host && !lockHeld(base+".lock") {
		return nil
	}
	return l
}

// lockHeld tells whether anyone holds the OFD lock on path (true when locks are unsupported).
func lockHeld(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return true
	}
	return lk.Type != unix.F_UNLCK
}

func (l *leaseRecord) String() string { return fmt.Sprintf("%s on %s", l.Holder, l.Host) }
