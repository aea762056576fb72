package storage

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
)

// OFD locks belong to an open file description, so two opens in one process conflict like two
// processes do, they are released when the holder dies, and NFSv4/CephFS/GlusterFS carry them to the
// server (flock is emulated there with the same POSIX locks).

func ofdLock(f *os.File, wait bool) error {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0}
	cmd := unix.F_OFD_SETLK
	if wait {
		cmd = unix.F_OFD_SETLKW
	}
	return unix.FcntlFlock(f.Fd(), cmd, &lk)
}

func isLockBusy(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES)
}

// lockPath takes an exclusive lock on path (creating it), polling so that ctx can end the wait.
func lockPath(ctx context.Context, path string) (unlock func(), err error) {
	for delay := time.Millisecond; ; {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		err = ofdLock(f, false)
		// A filesystem without locks (NFS mounted with nolock): go on; leases still guard disks.
		if err == nil || errors.Is(err, unix.ENOLCK) || errors.Is(err, unix.EOPNOTSUPP) {
			if samePath(f, path) {
				return func() { f.Close() }, nil
			}
			err = unix.EAGAIN // the holder removed the file under us: lock the new one
		}
		f.Close()
		if !isLockBusy(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(errdefs.ErrCancelled, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

// samePath tells whether the open f is still the file at path (lock files are removed with the
// volume they guard, and a lock on a removed file guards nothing).
func samePath(f *os.File, path string) bool {
	var a, b unix.Stat_t
	return unix.Fstat(int(f.Fd()), &a) == nil && unix.Stat(path, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino
}

// qemuHasOpen tells whether a running QEMU holds its image locks on path: QEMU takes OFD locks on
// bytes 100+ (permissions) and 200+ (shared permissions) of every image it opens.
func qemuHasOpen(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 100, Len: 200}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false
	}
	return lk.Type != unix.F_UNLCK
}
