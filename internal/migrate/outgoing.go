package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"tandem/api"
	"tandem/client"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/instance"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// moveTimeout bounds a whole move.
const moveTimeout = 30 * time.Minute

// outgoing is one move as the source drives it.
type outgoing struct {
	e      *Engine
	id     string
	remote string
	cl     *client.Client
	op     *operations.Op
	rec    *store.InstanceRecord
	drv    driver.Driver
	live   bool
	lazy   *bool  // the request's choice of post-copy: nil automatic
	shared string // the root's path when both hosts see it; "" to copy it
	bw     int64
	run    string // unix sockets of the forwarders
	start  time.Time
	result api.MigrationResult
	// The stall watchdog: transfers under way, and when a byte last crossed the link.
	transfers  atomic.Int32
	lastActive atomic.Int64
	sent       atomic.Int64 // bytes the transfers sent
}

func (o *outgoing) touch() { o.lastActive.Store(time.Now().UnixNano()) }

// transfer runs fn as a transfer the stall watchdog watches.
func (o *outgoing) transfer(fn func() error) error {
	o.touch()
	o.transfers.Add(1)
	defer o.transfers.Add(-1)
	return fn()
}

// watchStalls cancels the move when a transfer has moved no byte for StallTimeout.
func (o *outgoing) watchStalls(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		idle := time.Since(time.Unix(0, o.lastActive.Load()))
		if o.transfers.Load() > 0 && idle > StallTimeout {
			cancel(fmt.Errorf("the link to %s stalled: nothing crossed it for %s", o.remote, idle.Round(time.Second)))
			return
		}
	}
}

// Move moves an instance to a remote in an operation. Everything that can be checked before the
// instance is touched is checked before the operation starts.
func (e *Engine) Move(ctx context.Context, name string, req api.InstanceMovePost) (*api.Operation, error) {
	if req.MaxBandwidth < 0 {
		return nil, errdefs.Invalid("max_bandwidth %d: want bytes per second, or 0 for no cap", req.MaxBandwidth)
	}
	if req.Lazy != nil && *req.Lazy && !req.Live {
		return nil, errdefs.Invalid("lazy pages move a running container: add live")
	}
	cl, err := e.remote(req.Target)
	if err != nil {
		return nil, err
	}
	verb := "Moving"
	if req.Live {
		verb = "Live-moving"
	}
	check := func(ctx context.Context, _ *operations.Op, rec *store.InstanceRecord, drv driver.Driver) error {
		status, err := e.Instances.Status(ctx, rec, drv)
		if err != nil {
			return err
		}
		switch {
		case req.Live && status != api.StatusRunning:
			return errdefs.Conflict("instance %q is %s: --live moves a running instance", name, status)
		case !req.Live && status != api.StatusStopped:
			return errdefs.Conflict("instance %q is %s: stop it first, or move it --live", name, status)
		case rec.Type == api.TypeVM && req.Lazy != nil && *req.Lazy:
			return errdefs.Invalid("lazy pages are for containers: a VM moves with QEMU's pre-copy")
		}
		return instance.CheckNoVolumes(rec)
	}
	return e.Instances.RunMigration(name, fmt.Sprintf("%s instance %s to %s", verb, name, req.Target), check,
		func(ctx context.Context, op *operations.Op, rec *store.InstanceRecord, drv driver.Driver) error {
			o, done, err := e.newOutgoing(op, rec, drv, req.Target, cl, req.Live, req.MaxBandwidth)
			if err != nil {
				return err
			}
			defer done()
			o.lazy = req.Lazy
			err = o.drive(ctx, o.move)
			if err == nil {
				op.Progress(100, "moved to "+req.Target)
			}
			return err
		})
}

// newOutgoing sets up one move or copy; done removes its sockets' directory.
func (e *Engine) newOutgoing(op *operations.Op, rec *store.InstanceRecord, drv driver.Driver, remote string, cl *client.Client, live bool, bw int64) (*outgoing, func(), error) {
	o := &outgoing{e: e, id: uuid.NewString(), remote: remote, cl: cl, op: op, rec: rec, drv: drv,
		live: live, bw: bw, start: time.Now()}
	o.run = filepath.Join(e.RunDir, o.id[:8])
	if err := os.MkdirAll(o.run, 0o700); err != nil {
		return nil, nil, err
	}
	return o, func() { os.RemoveAll(o.run) }, nil
}

// drive runs fn bounded in time and watched for stalls; on success the operation gets the result.
func (o *outgoing) drive(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, moveTimeout)
	defer cancel()
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	go o.watchStalls(ctx, cancelCause)
	err := fn(ctx)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = fmt.Errorf("%w (%v)", err, cause)
	}
	if err == nil {
		o.result.TotalMillis = time.Since(o.start).Milliseconds()
		o.result.BytesSent = o.sent.Load()
		o.op.SetMetadata("result", o.result)
	}
	return err
}

// post describes the instance for the destination: a move keeps its NICs' MACs and addresses.
func (o *outgoing) post(kind string) api.MigrationPost {
	o.shared = sharedRoot(o.rec)
	post := api.MigrationPost{ID: o.id, Kind: kind, Live: o.live, Storage: api.StorageCopy,
		Name: o.rec.Name, Type: o.rec.Type, Image: o.rec.Image, ImageFP: o.rec.Handle.Spec.Image,
		Config: o.rec.Desired.Config, Created: o.rec.CreatedAt, SharedRoot: o.shared,
		Devices: instance.DevicesForMove(o.rec.Desired.Devices, o.e.Instances.NICs(context.Background(), o.rec))}
	if o.shared != "" {
		post.Storage = api.StorageShared
	}
	return post
}

func (o *outgoing) move(ctx context.Context) error {
	post := o.post(api.MigrationMove)
	o.step(2, "checking the destination has the image")
	if err := o.ensureImage(ctx, post.ImageFP); err != nil {
		return err
	}
	if !o.live && (post.Fresh() || o.rec.Type == api.TypeVM) {
		return o.moveStopped(ctx, post)
	}
	switch o.rec.Type {
	case api.TypeContainer:
		return o.moveContainer(ctx, post)
	case api.TypeVM:
		return o.moveVM(ctx, post)
	}
	return errdefs.Invalid("instance type %q cannot move", o.rec.Type)
}

// prepare sends the handle and asks the destination to get ready; it refuses with its reason.
func (o *outgoing) prepare(ctx context.Context, post api.MigrationPost) (*api.MigrationInfo, error) {
	h, err := json.Marshal(o.rec.Handle)
	if err != nil {
		return nil, err
	}
	post.Handle = h
	info, err := o.cl.PrepareMigration(ctx, post)
	if err != nil {
		return nil, fmt.Errorf("%s refused the instance: %w", o.remote, err)
	}
	return info, nil
}

// abortRemote makes the destination drop what it has (best effort: its watchdog does it anyway).
func (o *outgoing) abortRemote() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := o.cl.AbortMigration(ctx, o.id); err != nil && !client.IsStatus(err, http.StatusNotFound) {
		slog.Warn("could not tell the destination to drop the migration; its watchdog will", "migration", o.id, "err", err)
	}
}

// dropRemote makes sure the destination no longer runs an uncommitted instance before the source
// resumes its own: it asks it to drop it and, while it cannot be reached, waits until its
// watchdog must have (CommitTimeout without a word from the source).
func (o *outgoing) dropRemote() {
	deadline := time.Now().Add(CommitTimeout + 5*time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := o.cl.AbortMigration(ctx, o.id)
		cancel()
		if err == nil || client.IsStatus(err, http.StatusNotFound) || time.Now().After(deadline) {
			return
		}
		slog.Warn("the destination does not answer the abort; waiting until it must have dropped the instance", "migration", o.id, "err", err)
		time.Sleep(time.Second)
	}
}

// openTunnel returns the opener of tunnels to one of the destination's endpoints.
func (o *outgoing) openTunnel(to string) func(ctx context.Context) (io.ReadWriteCloser, error) {
	return func(ctx context.Context) (io.ReadWriteCloser, error) { return o.cl.OpenTunnel(ctx, o.id, to) }
}

// tunnel starts a forwarder from a local socket to one of the destination's endpoints.
func (o *outgoing) tunnel(ctx context.Context, to string) (*forwarder, error) {
	return forward(ctx, filepath.Join(o.run, to+".sock"), o.openTunnel(to), o.touch)
}

// rsync sends a tree to a destination endpoint, reporting progress between from and to percent,
// with the bytes that went through the tunnel so far, as stage.
func (o *outgoing) rsync(ctx context.Context, stage, src, endpoint string, from, to int, what string) error {
	f, err := o.tunnel(ctx, endpoint)
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		o.sent.Add(f.sent.Load())
	}()
	err = o.transfer(func() error {
		return rsyncTo(ctx, src, rsyncOpts{Socket: f.path, BWLimit: o.bw, Progress: func(p int) {
			sent := f.sent.Load()
			o.stage(stage, spanPercent(from, to, p), sent, 0, fmt.Sprintf("%s: %d%%, %s sent", what, p, size(sent)))
		}})
	})
	if err != nil {
		return fmt.Errorf("%s to %s: %w", what, o.remote, err)
	}
	return nil
}

// restoreRemote asks the destination to run the instance. ran says whether it does: on an
// ambiguous failure (the answer was lost) it waits until the destination says, or until the
// destination must have dropped it.
func (o *outgoing) restoreRemote(ctx context.Context, req api.MigrationRestorePost) (ran bool, err error) {
	// The point of no return: a cancel from here on no longer stops the move.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RestoreTimeout+10*time.Second)
	defer cancel()
	_, err = o.cl.MigrationAction(ctx, o.id, "restore", req)
	if err == nil {
		return true, nil
	}
	var se *client.StatusError
	if errors.As(err, &se) {
		return false, fmt.Errorf("%s could not run the instance: %w", o.remote, err)
	}
	slog.Warn("lost the destination during the restore; asking it how it ended", "migration", o.id, "err", err)
	status := o.settle(RestoreTimeout + CommitTimeout + 5*time.Second)
	if status == api.MigrationRunning {
		return true, nil
	}
	return false, fmt.Errorf("lost %s during the restore (%v); it does not run the instance", o.remote, err)
}

// commitRemote makes the instance the destination's. On a lost answer it asks until it knows.
func (o *outgoing) commitRemote(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CommitTimeout)
	defer cancel()
	for attempt := 0; ; attempt++ {
		_, err := o.cl.MigrationAction(ctx, o.id, "commit", nil)
		if err == nil {
			return nil
		}
		var se *client.StatusError
		if errors.As(err, &se) && se.Code != http.StatusConflict {
			return fmt.Errorf("%s refused the commit: %w", o.remote, err)
		}
		switch o.settle(CommitTimeout + 5*time.Second) {
		case api.MigrationCommitted:
			return nil
		case api.MigrationRunning:
			if attempt < 3 {
				continue
			}
		case api.MigrationAborted:
			return fmt.Errorf("%s dropped the instance before the commit reached it: %w", o.remote, err)
		}
		return errUndecided
	}
}

// errUndecided: the destination cannot say whether it committed; the instance stays frozen here
// and recovery keeps asking.
var errUndecided = errors.New("the destination does not answer whether it runs the instance")

// settle polls the destination's status of the migration for up to wait. A destination that
// does not know it, or cannot be reached all that time, has dropped it (its watchdog).
func (o *outgoing) settle(wait time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := o.cl.GetMigration(ctx, o.id)
		cancel()
		switch {
		case err == nil && info.Status != api.MigrationPreparing:
			return info.Status
		case client.IsStatus(err, http.StatusNotFound):
			return api.MigrationAborted
		case err == nil: // still preparing: the restore never reached it
			o.abortRemote()
			return api.MigrationAborted
		}
		if time.Now().After(deadline) {
			return api.MigrationAborted
		}
		time.Sleep(time.Second)
	}
}

// ensureImage uploads the instance's image to the destination unless it has it.
func (o *outgoing) ensureImage(ctx context.Context, fp string) error {
	if _, err := o.cl.GetImage(ctx, fp); err == nil {
		return nil
	} else if !client.IsStatus(err, http.StatusNotFound) {
		return fmt.Errorf("%s: %w", o.remote, err)
	}
	if o.e.Images == nil {
		return errdefs.NotFound("%s does not have image %s", o.remote, fp)
	}
	img, err := o.e.Images.Get(fp)
	if err != nil {
		return err
	}
	o.step(3, "sending the image to "+o.remote)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(o.e.Images.Export(ctx, fp, pw)) }()
	op, err := o.cl.UploadImage(ctx, pr, img.Size, nil, fp)
	pr.Close()
	if err != nil {
		return fmt.Errorf("send image to %s: %w", o.remote, err)
	}
	done, err := o.cl.WaitOperation(ctx, op.ID, nil)
	if err != nil {
		return fmt.Errorf("send image to %s: %w", o.remote, err)
	}
	if done.Status != api.OpSuccess {
		return fmt.Errorf("send image to %s: %s", o.remote, done.Err)
	}
	return nil
}

// finishHere forgets the moved instance on this host.
func (o *outgoing) finishHere(ctx context.Context) error {
	if err := o.e.Instances.ForgetMoved(context.WithoutCancel(ctx), o.rec, o.remote); err != nil {
		return fmt.Errorf("the instance runs on %s; forgetting it here: %w", o.remote, err)
	}
	return nil
}

// sharedRoot returns the instance's root path when it is on storage both hosts see.
func sharedRoot(rec *store.InstanceRecord) string {
	if r := rec.Handle.Spec.Root; r != nil && r.Shared {
		return r.Path
	}
	if rec.Type == api.TypeVM {
		if dir := rec.Desired.Config["vm.disk_dir"]; dir != "" {
			return filepath.Join(dir, rec.Handle.ID+".qcow2")
		}
	}
	return ""
}
