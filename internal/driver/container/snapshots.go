package container

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"sort"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

var _ driver.StateSnapshotter = (*Driver)(nil)

// Stateful snapshots: the memory of a running container, dumped with CRIU (leave-running) into
// <bundle>/snapshots/SNAP/ beside the control plane's snapshot of the root disk. A restore points
// the next Start at those images (CheckpointDir), which it keeps for the next restore.

var snapNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,79}$`)

// loadSnapshot loads the container and names the directory of its snapshot snap.
func (d *Driver) loadSnapshot(h *driver.Handle, snap string) (*instState, string, error) {
	st, err := d.mustLoad(h)
	if err != nil {
		return nil, "", err
	}
	if !snapNameRE.MatchString(snap) {
		return nil, "", errdefs.Invalid("container: bad snapshot name %q", snap)
	}
	return st, filepath.Join(d.paths(h.ID).bundle, "snapshots", snap), nil
}

// SnapshotState implements driver.StateSnapshotter. A paused container stays paused (CRIU puts
// the freezer back as it found it), so the caller can snapshot the disk at the same instant.
// Established TCP connections are saved (CRIU refuses to dump them otherwise); restored later,
// their peers have moved on and reset them.
func (d *Driver) SnapshotState(ctx context.Context, h *driver.Handle, snap string) error {
	st, dir, err := d.loadSnapshot(h, snap)
	if err != nil {
		return err
	}
	if d.criuPath == "" {
		return errdefs.Unavailable("a stateful snapshot needs CRIU, which is not installed")
	}
	if st.Migration != "" {
		return errdefs.Conflict("container %s is being migrated (%s)", h.ID, st.Migration)
	}
	if status, err := d.State(ctx, h); err != nil {
		return err
	} else if status != driver.StatusRunning && status != driver.StatusPaused {
		return driver.ErrNotRunning
	}
	if _, err := os.Stat(dir); err == nil {
		return errdefs.Exists("container %s already has a stateful snapshot %q", h.ID, snap)
	}
	tmp := dir + ".new"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	progress.Report(ctx, 50, "saving memory")
	o := runc.CheckpointOpts{ImagePath: tmp, LeaveRunning: true, TCPEstablished: true}
	if err := d.dumpImages(ctx, h, st, o); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	return os.Rename(tmp, dir)
}

// StateSnapshots implements driver.StateSnapshotter.
func (d *Driver) StateSnapshots(ctx context.Context, h *driver.Handle) ([]string, error) {
	if err := checkID(h.ID); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(d.paths(h.ID).bundle, "snapshots"))
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() && snapNameRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// RestoreState implements driver.StateSnapshotter; snap "" drops a pending restore (a stateful
// stop's too), so that the next Start boots.
func (d *Driver) RestoreState(ctx context.Context, h *driver.Handle, snap string) error {
	if snap == "" {
		if st, err := d.mustLoad(h); err != nil || !st.Checkpoint {
			return err
		}
		return d.DiscardCheckpoint(ctx, h)
	}
	st, dir, err := d.loadSnapshot(h, snap)
	if err != nil {
		return err
	}
	meta, err := readDumpMeta(dir, st)
	if err != nil {
		return err
	}
	if st.Migration != "" {
		return errdefs.Conflict("container %s is being migrated (%s)", h.ID, st.Migration)
	}
	st.Checkpoint, st.CheckpointTCP, st.CheckpointDir = true, meta.TCP, dir
	return d.save(h, st)
}

// DeleteStateSnapshot implements driver.StateSnapshotter; a restore pending from it is dropped.
func (d *Driver) DeleteStateSnapshot(ctx context.Context, h *driver.Handle, snap string) error {
	st, dir, err := d.loadSnapshot(h, snap)
	if err != nil {
		return err
	}
	if st.Checkpoint && st.CheckpointDir == dir {
		st.Checkpoint, st.CheckpointTCP, st.CheckpointDir = false, false, ""
		if err := d.save(h, st); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}
