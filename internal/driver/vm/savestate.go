package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
	"tandem/internal/qmp"
)

// A stateful stop saves the guest with QEMU's migration stream into a file of the instance dir;
// the next Start runs QEMU with -incoming defer and loads it, so the guest carries on where it
// was. The stream goes over unix sockets that the daemon copies to and from the file: QEMU's
// seccomp sandbox forbids exec:, and QEMU 7.2 has no file: migration.

// saveTimeout bounds saving or loading a guest of memMiB: the whole RAM crosses once.
func saveTimeout(memMiB int) time.Duration {
	return 30*time.Second + time.Duration(memMiB/64)*time.Second
}

func savedStatePath(p paths) string { return filepath.Join(p.dir, "saved-state") }

// canSaveState refuses what a saved state cannot bring back: volumes (plugged after a start,
// while the saved devices expect them at load time) and a TPM (swtpm keeps its own volatile state).
func canSaveState(h *driver.Handle, cfg instanceConfig) error {
	if cfg.Windows {
		return errdefs.Invalid("vm: stateful stop of a VM with a TPM is not supported")
	}
	for name, dev := range h.Spec.Devices {
		if dev["type"] == "disk" && dev["source"] != "" { // a volume (the root disk is not a device)
			return errdefs.Invalid("vm: stateful stop of a VM with volumes attached is not supported: detach %s first", name)
		}
	}
	return nil
}

// saveState pauses the guest, writes its state to savedStatePath and marks the config; on failure
// the guest runs on as it was and no state is kept. The caller quits QEMU afterwards.
func (d *Driver) saveState(ctx context.Context, h *driver.Handle, p paths, cfg instanceConfig) (err error) {
	if err := canSaveState(h, cfg); err != nil {
		return err
	}
	_, mem, err := sizing(&h.Spec, cfg.Windows)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, saveTimeout(mem))
	defer cancel()
	tmp := savedStatePath(p) + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(tmp)
		}
	}()
	sock := filepath.Join(p.run, "save.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer os.Remove(sock)
	defer ln.Close()
	if d.cred != nil { // QEMU's user connects to it
		if err := os.Chown(sock, int(d.cred.Uid), int(d.cred.Gid)); err != nil {
			return err
		}
	}
	copied := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			copied <- err
			return
		}
		defer conn.Close()
		_, err = io.Copy(f, conn)
		copied <- err
	}()
	wasRunning := false
	err = withQMP(ctx, p, func(c *qmp.Client) (err error) {
		wasRunning, err = migrateOut(ctx, c, "unix:"+sock)
		return err
	})
	if err != nil {
		return fmt.Errorf("vm: saving the guest's state: %w", err)
	}
	select {
	case err = <-copied:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, savedStatePath(p))
	}
	if err == nil {
		cfg.SavedState = true
		if err = writeJSON(p.config, cfg); err != nil {
			os.Remove(savedStatePath(p))
		}
	}
	if err != nil {
		if wasRunning { // QEMU completed the stream: the guest waits, paused, in postmigrate
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			withQMP(rctx, p, func(c *qmp.Client) error { return c.Cont(rctx) })
			cancel()
		}
		return fmt.Errorf("vm: writing the guest's state: %w", err)
	}
	return nil
}

// migrateOut pauses the guest and sends its state to uri, waiting until QEMU completed it; it
// says whether the guest ran before. On failure the migration is cancelled and a guest that ran
// runs again.
func migrateOut(ctx context.Context, c *qmp.Client, uri string) (wasRunning bool, err error) {
	st, err := c.QueryStatus(ctx)
	if err != nil {
		return false, err
	}
	if err := c.Stop(ctx); err != nil {
		return st.Running, err
	}
	undo := func(cause error) (bool, error) {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		c.MigrateCancel(uctx)
		if st.Running {
			c.Cont(uctx)
		}
		return st.Running, cause
	}
	if err := c.Migrate(ctx, uri); err != nil {
		return undo(err)
	}
	for {
		info, err := c.QueryMigrate(ctx)
		if err != nil {
			return undo(err)
		}
		switch info.Status {
		case qmp.MigrationCompleted:
			return st.Running, nil
		case qmp.MigrationFailed, qmp.MigrationCancelled:
			return undo(fmt.Errorf("migration %s: %s", info.Status, or(info.ErrorDesc, "no reason given")))
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return undo(err)
		}
	}
}

// loadState feeds the saved state to a QEMU started with -incoming defer and waits until it is
// loaded (the guest paused, ready for cont).
func loadState(ctx context.Context, c *qmp.Client, p paths, memMiB int) error {
	ctx, cancel := context.WithTimeout(ctx, saveTimeout(memMiB))
	defer cancel()
	f, err := os.Open(savedStatePath(p))
	if err != nil {
		return err
	}
	defer f.Close()
	sock := filepath.Join(p.run, "restore.sock")
	os.Remove(sock)
	defer os.Remove(sock)
	if err := c.MigrateIncoming(ctx, "unix:"+sock); err != nil {
		return err
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, f)
		if uc, ok := conn.(*net.UnixConn); ok {
			uc.CloseWrite()
		}
		sent <- err
	}()
	if err := waitIncoming(ctx, c); err != nil {
		conn.Close()
		return errors.Join(err, <-sent)
	}
	return <-sent
}

// resumeSaved loads a stateful stop's saved state into the QEMU Start launched. The state is used
// once: loaded or not, it is dropped, so that a state that cannot load (a QEMU upgrade, changed
// devices) costs one failed start and the next one boots afresh.
func (d *Driver) resumeSaved(ctx context.Context, h *driver.Handle, p paths, cfg *instanceConfig, c *qmp.Client) error {
	progress.Report(ctx, 60, "loading the saved state")
	_, mem, err := sizing(&h.Spec, cfg.Windows)
	if err == nil {
		err = loadState(ctx, c, p, mem)
	}
	os.Remove(savedStatePath(p))
	cfg.SavedState = false
	if werr := writeJSON(p.config, *cfg); err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("vm: the state saved by the stateful stop did not load (%w); it is dropped: start again to boot afresh", err)
	}
	return nil
}
