package migrate

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/instance"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// moveStopped moves or copies a stopped instance. A copied root is made anew on the destination
// and filled from here (coldroot.go); a VM's root on a shared pool is adopted there, nothing is
// sent. A move deletes the instance here once the destination has committed it; a copy leaves
// it alone.
func (o *outgoing) moveStopped(ctx context.Context, post api.MigrationPost) error {
	o.result.Mode = "cold"
	move := post.Kind == api.MigrationMove
	if post.Fresh() {
		post.DiskBytes = o.rootBytes(ctx)
	}
	o.step(5, "preparing "+o.remote)
	if _, err := o.prepare(ctx, post); err != nil {
		return err
	}
	if post.Fresh() {
		if err := o.sendRoot(ctx); err != nil {
			o.abortRemote()
			return err
		}
	}
	if move {
		if err := o.e.Instances.MarkOutgoing(o.rec.Name, o.id, o.remote); err != nil {
			o.abortRemote()
			return err
		}
	}
	o.stage(StageRestore, 92, 0, 0, "finishing on "+o.remote)
	if ran, err := o.restoreRemote(ctx, api.MigrationRestorePost{}); !ran {
		if move {
			o.e.Instances.MarkOutgoing(o.rec.Name, "", "")
		}
		return err
	}
	if err := o.commitRemote(ctx); err != nil {
		if !move { // the destination drops an uncommitted copy by itself
			o.abortRemote()
			return err
		}
		return o.undecidedOr(err, func() error { return nil })
	}
	if !move {
		return nil
	}
	if err := o.drv.Delete(context.WithoutCancel(ctx), o.rec.Handle); err != nil {
		return fmt.Errorf("the instance is on %s; deleting it here: %w", o.remote, err)
	}
	return o.finishHere(ctx)
}

// rootBytes is what the stopped instance's root will take on the destination, for its check
// (0: unknown).
func (o *outgoing) rootBytes(ctx context.Context) int64 {
	switch o.rec.Type {
	case api.TypeContainer:
		if cd, err := containerOf(o.drv); err == nil {
			if tree, release, err := cd.RootTree(ctx, o.rec.Handle); err == nil {
				defer release()
				return diskUsage(tree)
			}
		}
	case api.TypeVM:
		if vd, err := vmOf(o.drv); err == nil {
			if path, format, err := vd.StoppedDisk(ctx, o.rec.Handle); err == nil {
				return measureFlat(ctx, path, format)
			}
		}
	}
	return 0
}

// measureFlat is what the disk takes once flattened into one qcow2 file (qemu-img measure).
func measureFlat(ctx context.Context, path, format string) int64 {
	out, err := exec.CommandContext(ctx, "qemu-img", "measure", "--output=json", "-f", format, "-O", "qcow2", path).Output()
	if err != nil {
		return 0
	}
	var m struct {
		Required int64 `json:"required"`
	}
	if json.Unmarshal(out, &m) != nil {
		return 0
	}
	return m.Required
}

// Copy makes a new stopped instance on a remote from a stopped one here: the same image,
// configuration and root contents, its own name, MACs and addresses.
func (e *Engine) Copy(ctx context.Context, name string, req api.InstanceCopyPost) (*api.Operation, error) {
	if err := instance.ValidateName(req.Name); err != nil {
		return nil, err
	}
	if req.MaxBandwidth < 0 {
		return nil, errdefs.Invalid("max_bandwidth %d: want bytes per second, or 0 for no cap", req.MaxBandwidth)
	}
	cl, err := e.remote(req.Target)
	if err != nil {
		return nil, err
	}
	check := func(ctx context.Context, _ *operations.Op, rec *store.InstanceRecord, drv driver.Driver) error {
		return e.Instances.CheckCopyable(ctx, rec, drv)
	}
	desc := fmt.Sprintf("Copying instance %s to %s on %s", name, req.Name, req.Target)
	return e.Instances.RunMigration(name, desc, check,
		func(ctx context.Context, op *operations.Op, rec *store.InstanceRecord, drv driver.Driver) error {
			o, done, err := e.newOutgoing(op, rec, drv, req.Target, cl, false, req.MaxBandwidth)
			if err != nil {
				return err
			}
			defer done()
			post := o.post(api.MigrationCopy)
			o.shared = "" // a copy gets its own root, wherever the source's is
			post.Name, post.Pool, post.Storage, post.SharedRoot = req.Name, req.Storage, api.StorageCopy, ""
			post.Devices, post.Created = instance.DevicesForCopy(rec.Desired.Devices), time.Now().UTC()
			err = o.drive(ctx, func(ctx context.Context) error {
				if err := o.ensureImage(ctx, post.ImageFP); err != nil {
					return err
				}
				return o.moveStopped(ctx, post)
			})
			if err == nil {
				op.Progress(100, fmt.Sprintf("copied to %s on %s", req.Name, req.Target))
			}
			return err
		})
}
