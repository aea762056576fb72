package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

// CheckpointOpts tune a checkpoint.
type CheckpointOpts struct {
	// LeaveRunning keeps the container running after the dump (a stateful snapshot); otherwise
	// CRIU stops it and the next Start restores it.
	LeaveRunning bool
	// TCPEstablished carries established TCP connections (they are frozen until the restore).
	TCPEstablished bool
}

// Checkpointer saves and restores the memory state of running instances.
type Checkpointer interface {
	// Checkpoint dumps a running instance's state. Without LeaveRunning the instance stops and
	// its next Start restores the state instead of booting.
	Checkpoint(ctx context.Context, h *driver.Handle, opts CheckpointOpts) error
	// HasCheckpoint reports whether the next Start restores a checkpoint.
	HasCheckpoint(ctx context.Context, h *driver.Handle) (bool, error)
	// DiscardCheckpoint drops a checkpoint, so that the next Start boots afresh.
	DiscardCheckpoint(ctx context.Context, h *driver.Handle) error
}

// Checkpoint implements Checkpointer with `runc checkpoint` (CRIU). Stop with Stateful is
// Checkpoint without LeaveRunning.
func (d *Driver) Checkpoint(ctx context.Context, h *driver.Handle, opts CheckpointOpts) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if status, err := d.State(ctx, h); err != nil {
		return err
	} else if status != driver.StatusRunning && status != driver.StatusPaused {
		return driver.ErrNotRunning
	}
	return d.checkpoint(ctx, h, st, opts)
}

func (d *Driver) checkpoint(ctx context.Context, h *driver.Handle, st *instState, opts CheckpointOpts) error {
	if d.criuPath == "" {
		return errdefs.Unavailable("checkpoint needs CRIU, which is not installed")
	}
	p := d.paths(h.ID)
	for _, dir := range []string{p.checkpoint, p.criuWork} {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.Mkdir(p.criuWork, 0o700); err != nil {
		return err
	}
	progress.Report(ctx, 10, "checkpointing")
	err := d.runc.Checkpoint(ctx, h.ID, runc.CheckpointOpts{
		ImagePath: p.checkpoint, WorkPath: p.criuWork, LeaveRunning: opts.LeaveRunning,
		TCPEstablished: opts.TCPEstablished, FileLocks: true,
	})
	if err != nil {
		os.RemoveAll(p.checkpoint)
		return fmt.Errorf("checkpoint %s: %w%s", h.ID, err, criuErrors(filepath.Join(p.criuWork, "dump.log")))
	}
	if err := disarmNotify(filepath.Join(p.checkpoint, "seccomp.img")); err != nil {
		return err
	}
	if err := prepareImages(p.checkpoint, int(st.IDs.ToHost(0))); err != nil {
		return err
	}
	if !opts.LeaveRunning {
		if err := d.cleanupRuntime(ctx, h.ID); err != nil {
			return err
		}
		st.Checkpoint, st.CheckpointTCP = true, opts.TCPEstablished
		return d.save(h, st)
	}
	return nil
}

// restore starts the container from its checkpoint (called by Start). The checkpoint is kept if
// the restore fails, so it can be retried or discarded.
func (d *Driver) restore(ctx context.Context, h *driver.Handle, st *instState) error {
	if d.criuPath == "" {
		return errdefs.Unavailable("container %s has a checkpoint, and restoring it needs CRIU, which is not installed", h.ID)
	}
	p := d.paths(h.ID)
	os.RemoveAll(p.criuWork)
	if err := os.Mkdir(p.criuWork, 0o700); err != nil {
		return err
	}
	progress.Report(ctx, 30, "restoring checkpoint")
	argv := d.runc.RestoreArgs(h.ID, p.bundle, p.initPid, p.consoleSock, runc.CheckpointOpts{
		ImagePath: p.checkpoint, WorkPath: p.criuWork, TCPEstablished: st.CheckpointTCP, FileLocks: true,
	})
	pid, err := d.startShim(ctx, h, p, argv)
	if err != nil {
		return fmt.Errorf("restore %s: %w%s", h.ID, err, criuErrors(filepath.Join(p.criuWork, "restore.log")))
	}
	if err := bindNetns(pid, p.netns); err != nil {
		return err
	}
	if err := loopbackUp(p.netns); err != nil {
		slog.Warn("restore: cannot bring lo up", "container", h.ID, "err", err)
	}
	if d.opts.PrepareNetwork != nil {
		if err := d.opts.PrepareNetwork(ctx, h, p.netns); err != nil {
			return fmt.Errorf("prepare network: %w", err)
		}
	}
	st.Checkpoint, st.CheckpointTCP = false, false
	os.RemoveAll(p.checkpoint)
	return d.save(h, st)
}

// HasCheckpoint reports whether a stateful stop left a checkpoint the next Start restores.
func (d *Driver) HasCheckpoint(ctx context.Context, h *driver.Handle) (bool, error) {
	st, err := d.mustLoad(h)
	if err != nil {
		return false, err
	}
	return st.Checkpoint, nil
}

// DiscardCheckpoint makes the next Start boot afresh.
func (d *Driver) DiscardCheckpoint(ctx context.Context, h *driver.Handle) error {
	st, err := d.mustLoad(h)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(d.paths(h.ID).checkpoint); err != nil {
		return err
	}
	st.Checkpoint, st.CheckpointTCP = false, false
	return d.save(h, st)
}

// prepareImages makes a checkpoint restorable into a user namespace. CRIU's restored root task
// reads images from inside the container's new user namespace, where only files of the
// container's root (hostRoot) are open to it, and it reads timens-0.img before its parent has
// written the namespace's id map, when it is nobody: that file (clock offsets only) and the
// directory's search bit are for others. Without this CRIU fails, sometimes, with "Unable to open
// timens-0.img: Permission denied". Memory images stay 0600.
func prepareImages(dir string, hostRoot int) error {
	err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, hostRoot, hostRoot); err != nil {
			return err
		}
		mode := os.FileMode(0o600)
		switch {
		case de.IsDir():
			mode = 0o711
		case strings.HasPrefix(de.Name(), "timens-"):
			mode = 0o644
		}
		return os.Chmod(path, mode)
	})
	return err
}

// retUserNotif and retAllow are the seccomp BPF "ret" instructions (code BPF_RET|BPF_K = 0x06,
// jt 0, jf 0, k = the action) for SECCOMP_RET_USER_NOTIF and SECCOMP_RET_ALLOW, little-endian.
var (
	retUserNotif = []byte{0x06, 0, 0, 0, 0x00, 0x00, 0xc0, 0x7f}
	retAllow     = []byte{0x06, 0, 0, 0, 0x00, 0x00, 0xff, 0x7f}
)

// disarmNotify rewrites a CRIU seccomp image so that the filters' user-notification returns
// (sysinfo, which the shim answers) become "allow". CRIU restores filters without their
// listener, and a notification with no listener fails the syscall with ENOSYS: restored
// processes would get garbage from free and uptime. Disarmed, they get the kernel's (host)
// sysinfo; processes exec'd after the restore get a listening filter again. The instruction has
// a fixed 8-byte encoding, so it is patched in place inside the protobuf.
func disarmNotify(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !bytes.Contains(data, retUserNotif) {
		return nil
	}
	data = bytes.ReplaceAll(data, retUserNotif, retAllow)
	return os.WriteFile(path, data, 0o600)
}

var criuErrorRE = regexp.MustCompile(`Error \(([^)]*)\): (.*)`)

// criuErrors returns the Error lines of a CRIU log, the part of a failure runc does not show.
func criuErrors(logPath string) string {
	data, err := os.ReadFile(logPath)
	if errors.Is(err, os.ErrNotExist) || err != nil {
		return ""
	}
	var msgs []string
	for _, line := range strings.Split(string(data), "\n") {
		if m := criuErrorRE.FindStringSubmatch(line); m != nil && !strings.Contains(m[2], "RLIMIT_NOFILE") {
			msgs = append(msgs, m[1]+": "+strings.TrimSpace(m[2]))
		}
	}
	if len(msgs) > 5 {
		msgs = msgs[len(msgs)-5:]
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (criu: " + strings.Join(msgs, "; ") + ")"
}
