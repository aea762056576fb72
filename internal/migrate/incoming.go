package migrate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/driver/vm"
	"tandem/internal/errdefs"
	"tandem/internal/instance"
)

// incoming is one migration this host receives.
type incoming struct {
	id   string
	post api.MigrationPost
	dir  string // state: the dump copy, rsync's config
	run  string // unix sockets

	root *rootReceiver // a stopped instance's root, filled by the source (fresh)

	mu         sync.Mutex // one step at a time
	status     string
	in         *instance.Incoming
	restoredAt time.Time
	lazy       bool         // restored with its memory still on the source
	lastActive atomic.Int64 // unix nanoseconds
	stop       chan struct{}

	pagesMu    sync.Mutex
	pages      *pageRelay // lazy moves: joins the lazy-pages daemon to the source's tunnels
	pagesEnded bool       // the migration ended: no relay any more
}

// relay returns the migration's page relay, started on first use (a tunnel or the restore may
// come first).
func (c *incoming) relay() (*pageRelay, error) {
	c.pagesMu.Lock()
	defer c.pagesMu.Unlock()
	if c.pagesEnded {
		return nil, errRelayClosed
	}
	if c.pages == nil {
		r, err := newPageRelay(c.touch)
		if err != nil {
			return nil, err
		}
		c.pages = r
	}
	return c.pages, nil
}

// closeRelay ends the page relay: at once, unless the move committed (every page arrived then;
// the lazy-pages daemon's last exchange may still be under way).
func (c *incoming) closeRelay(committed bool) {
	c.pagesMu.Lock()
	defer c.pagesMu.Unlock()
	c.pagesEnded = true
	if c.pages == nil {
		return
	}
	grace := time.Duration(0)
	if committed {
		grace = pagesGrace
	}
	c.pages.Close(grace)
}

func (c *incoming) touch() { c.lastActive.Store(time.Now().UnixNano()) }

var migrationIDRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Prepare starts receiving an instance: records, NIC leases, image reference, and the driver's
// reception (a container adopted; a VM's QEMU waiting for the stream). It leaves nothing on error.
func (e *Engine) Prepare(ctx context.Context, post api.MigrationPost) (*api.MigrationInfo, error) {
	if !migrationIDRE.MatchString(post.ID) {
		return nil, errdefs.Invalid("migration id %q: want a UUID", post.ID)
	}
	if post.Kind != api.MigrationMove && post.Kind != api.MigrationCopy {
		return nil, errdefs.Invalid("migration kind %q: want move or copy", post.Kind)
	}
	if post.Storage != api.StorageShared && post.Storage != api.StorageCopy {
		return nil, errdefs.Invalid("storage %q: want shared or copy", post.Storage)
	}
	if post.Storage == api.StorageShared && !filepath.IsAbs(post.SharedRoot) {
		return nil, errdefs.Invalid("shared storage needs the root's absolute path")
	}
	e.mu.Lock()
	_, dup := e.incoming[post.ID]
	e.mu.Unlock()
	if dup {
		return nil, errdefs.Exists("migration %s is already under way", post.ID)
	}
	os.MkdirAll(e.Dir, 0o700)
	if err := checkRoom(post, e.Dir); err != nil {
		return nil, err
	}
	in, err := e.Instances.BeginIncoming(ctx, post)
	if err != nil {
		return nil, err
	}
	c := &incoming{id: post.ID, post: post, in: in, status: api.MigrationPreparing, stop: make(chan struct{}),
		dir: filepath.Join(e.Dir, "incoming", post.ID), run: filepath.Join(e.RunDir, post.ID[:8])}
	c.touch()
	info, err := e.receive(ctx, c)
	if err != nil {
		e.dropDriver(context.WithoutCancel(ctx), c)
		in.Drop(context.WithoutCancel(ctx))
		os.RemoveAll(c.dir)
		os.RemoveAll(c.run)
		return nil, err
	}
	in.Save(ctx)
	e.mu.Lock()
	e.incoming[c.id] = c
	e.mu.Unlock()
	go e.watch(c)
	slog.Info("receiving instance", "instance", post.Name, "migration", post.ID, "live", post.Live, "storage", post.Storage)
	return info, nil
}

// receive makes the driver ready to receive.
func (e *Engine) receive(ctx context.Context, c *incoming) (*api.MigrationInfo, error) {
	for _, d := range []string{c.dir, filepath.Join(c.dir, "dump"), c.run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	h := c.in.Record.Handle
	info := &api.MigrationInfo{ID: c.id, Name: c.post.Name, Status: api.MigrationPreparing}
	if c.post.Fresh() {
		return info, e.receiveRoot(ctx, c, info)
	}
	switch c.post.Type {
	case api.TypeContainer:
		cd, err := containerOf(c.in.Driver)
		if err != nil {
			return nil, err
		}
		f := cd.MigrationFeatures(ctx)
		if c.post.Live && !f.CRIU {
			return nil, errdefs.Unavailable("this host cannot restore a running container: %s", f.NoCRIU)
		}
		if f.PreDump {
			info.Modes = append(info.Modes, "predump")
		}
		root := "" // a root on a pool (Spec.Root) is the driver's to place
		if c.post.Storage == api.StorageShared && h.Spec.Root == nil {
			root = c.post.SharedRoot
		}
		if err := cd.Adopt(ctx, h, containerAdoptOpts(root)); err != nil {
			return nil, err
		}
		if c.post.Live { // adopted: the driver knows the container's user namespace now
			if why := cd.LazyRestoreRefusal(h); why == "" {
				info.Modes = append(info.Modes, "lazy")
			} else {
				info.Notes = append(info.Notes, "lazy pages: "+why)
			}
		}
		info.Rootfs = cd.RootfsPath(h)
		switch {
		case c.post.Storage == api.StorageCopy && h.Spec.Root != nil: // on this host's pool
			if err := receiveTree(ctx, c, cd, info); err != nil {
				return nil, err
			}
		case c.post.Storage == api.StorageCopy:
			if err := os.MkdirAll(info.Rootfs, 0o755); err != nil {
				return nil, err
			}
		}
	case api.TypeVM:
		vd, err := vmOf(c.in.Driver)
		if err != nil {
			return nil, err
		}
		if !c.post.Live { // a stopped VM on a shared pool: its disk is adopted, QEMU starts later
			nh, err := c.in.Driver.Create(ctx, &h.Spec)
			if err != nil {
				return nil, err
			}
			nh.Driver = h.Driver
			c.in.Record.Handle = nh
			return info, nil
		}
		opts := vm.IncomingOpts{Listen: "unix:" + filepath.Join(c.run, "mig.sock"), SharedDisk: c.post.Storage == api.StorageShared}
		if !opts.SharedDisk {
			opts.NBDListen = "unix:" + filepath.Join(c.run, "nbd.sock")
			if r := h.Spec.Root; r != nil { // the mirror's target is the root volume on this host's pool
				opts.DiskPath, opts.PoolDisk = r.Path, true
			}
		} else if opts.DiskPath = c.post.SharedRoot; h.Spec.Root != nil {
			opts.DiskPath = h.Spec.Root.Path // this host's path to the shared disk
		}
		if _, err := vd.PrepareIncoming(ctx, h, opts); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// get finds an incoming migration and marks it active.
func (e *Engine) get(id string) (*incoming, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.incoming[id]
	if !ok {
		return nil, errdefs.NotFound("no migration %s is under way here", id)
	}
	c.touch()
	return c, nil
}

// Status reports an incoming migration, under way or recently ended.
func (e *Engine) Status(id string) (*api.MigrationInfo, error) {
	e.mu.Lock()
	c, ok := e.incoming[id]
	f, ended := e.finished[id]
	e.mu.Unlock()
	if ok {
		c.touch()
		c.mu.Lock()
		status := c.status
		c.mu.Unlock()
		if status != api.MigrationAborted && status != api.MigrationCommitted {
			return &api.MigrationInfo{ID: id, Name: c.post.Name, Status: status}, nil
		}
		e.mu.Lock() // it ended while we waited: its record says how
		f, ended = e.finished[id]
		e.mu.Unlock()
	}
	if ended {
		return &api.MigrationInfo{ID: id, Status: f.status, Error: f.err}, nil
	}
	return nil, errdefs.NotFound("no migration %s is known here", id)
}

// Tunnel joins conn to one of an incoming migration's endpoints until either side ends.
func (e *Engine) Tunnel(ctx context.Context, id, to string, conn io.ReadWriteCloser) error {
	c, err := e.get(id)
	if err != nil {
		return err
	}
	switch to {
	case "rootfs", "dump":
		dir := filepath.Join(c.dir, "dump")
		if to == "rootfs" && c.root != nil {
			if c.root.tree == "" {
				return errdefs.Invalid("migration %s has no root tree to receive", id)
			}
			dir = c.root.tree
		} else if to == "rootfs" {
			cd, err := containerOf(c.in.Driver)
			if err != nil || c.post.Storage == api.StorageShared {
				return errdefs.Invalid("migration %s has no rootfs to receive", id)
			}
			dir = cd.RootfsPath(c.in.Record.Handle)
		}
		return serveRsync(ctx, activeConn{conn, c}, dir, c.dir)
	case "migration", "nbd":
		name := map[string]string{"migration": "mig.sock", "nbd": "nbd.sock"}[to]
		local, err := net.Dial("unix", filepath.Join(c.run, name))
		if err != nil {
			return errdefs.Unavailable("migration %s: %s endpoint: %v", id, to, err)
		}
		return splice(conn, local, nil, c.touch)
	case "pages":
		if c.post.Type != api.TypeContainer || !c.post.Live {
			return errdefs.Invalid("migration %s has no memory to pull", id)
		}
		r, err := c.relay()
		if err != nil {
			return err
		}
		return r.park(ctx, conn)
	}
	return errdefs.Invalid("tunnel to %q: want rootfs, dump, migration, nbd or pages", to)
}

// activeConn marks its migration active on every read.
type activeConn struct {
	io.ReadWriteCloser
	c *incoming
}

func (a activeConn) Read(p []byte) (int, error) {
	a.c.touch()
	return a.ReadWriteCloser.Read(p)
}

// Restore runs the instance here: a container from its dump, a VM resumed after the stream.
// A cold move has nothing to run. On failure nothing of it is left here.
func (e *Engine) Restore(ctx context.Context, id string, req api.MigrationRestorePost) (*api.MigrationInfo, error) {
	c, err := e.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status != api.MigrationPreparing {
		return nil, errdefs.Conflict("migration %s is %s", id, c.status)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RestoreTimeout)
	defer cancel()
	start := time.Now()
	err = e.restore(ctx, c, req)
	c.in.Save(context.WithoutCancel(ctx))
	if err != nil {
		e.abortLocked(c, err)
		return nil, err
	}
	c.status, c.restoredAt = api.MigrationRunning, time.Now()
	return &api.MigrationInfo{ID: id, Name: c.post.Name, Status: c.status, RestoreMillis: time.Since(start).Milliseconds()}, nil
}

func (e *Engine) restore(ctx context.Context, c *incoming, req api.MigrationRestorePost) error {
	h := c.in.Record.Handle
	if c.root != nil { // the root is all here
		if err := c.root.finish(ctx); err != nil || !c.post.Live {
			return err
		}
	}
	if !c.post.Live {
		return nil
	}
	switch c.post.Type {
	case api.TypeContainer:
		cd, _ := containerOf(c.in.Driver)
		dir := filepath.Join(c.dir, "dump")
		if req.DumpDir != "" {
			if c.post.Storage != api.StorageShared || !filepath.IsAbs(req.DumpDir) || filepath.Clean(req.DumpDir) != req.DumpDir {
				return errdefs.Invalid("dump dir %q: only an absolute path on shared storage", req.DumpDir)
			}
			dir = req.DumpDir
		}
		opts := containerRestoreOpts(dir)
		if req.Lazy {
			r, err := c.relay()
			if err != nil {
				return err
			}
			opts.Lazy, opts.PageServerAddr = true, r.Addr()
		}
		stats, err := cd.Restore(ctx, h, opts)
		if err != nil {
			return err
		}
		if req.Lazy {
			c.lazy = true
			go e.watchLazy(c, stats.LazyDone)
		}
		return nil
	case api.TypeVM:
		vd, _ := vmOf(c.in.Driver)
		return vd.FinishIncoming(ctx, h)
	}
	return nil
}

// watchLazy follows a lazy restore's memory transfer. A transfer that fails before the commit
// leaves a copy with holes in its memory: it is dropped at once (the source, which kept every
// page, resumes its own). The source commits only after every page arrived, so a failure after
// the commit can only be the last exchange with the page server: the container has its memory.
func (e *Engine) watchLazy(c *incoming, done <-chan error) {
	if done == nil {
		return
	}
	err := <-done
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		slog.Info("lazy move: every page arrived", "instance", c.post.Name, "migration", c.id)
	case c.status == api.MigrationCommitted:
		slog.Warn("lazy move: the lazy-pages daemon failed after every page had arrived", "instance", c.post.Name, "err", err)
	default:
		e.abortLocked(c, fmt.Errorf("the memory transfer failed: %w", err))
	}
}

// Commit makes the instance this host's.
func (e *Engine) Commit(ctx context.Context, id string) (*api.MigrationInfo, error) {
	c, err := e.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status != api.MigrationRunning {
		return nil, errdefs.Conflict("migration %s is %s: nothing to commit", id, c.status)
	}
	power := api.PowerStopped
	if c.post.Live {
		power = api.PowerRunning
	}
	if err := c.in.Finish(context.WithoutCancel(ctx), power); err != nil {
		return nil, err
	}
	e.end(c, api.MigrationCommitted, "")
	slog.Info("instance arrived", "instance", c.post.Name, "migration", id)
	return &api.MigrationInfo{ID: id, Name: c.post.Name, Status: api.MigrationCommitted}, nil
}

// Abort drops an incoming migration that is not committed.
func (e *Engine) Abort(ctx context.Context, id string) error {
	c, err := e.get(id)
	if err != nil {
		if st, _ := e.Status(id); st != nil && st.Status == api.MigrationAborted {
			return nil
		}
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status == api.MigrationCommitted {
		return errdefs.Conflict("migration %s is committed: the instance is this host's", id)
	}
	e.abortLocked(c, fmt.Errorf("aborted by the source"))
	return nil
}

// abortLocked removes everything of c here; c.mu is held.
func (e *Engine) abortLocked(c *incoming, why error) {
	if c.status == api.MigrationAborted || c.status == api.MigrationCommitted {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.dropDriver(ctx, c)
	c.in.Drop(ctx)
	e.end(c, api.MigrationAborted, why.Error())
	slog.Warn("incoming migration dropped", "instance", c.post.Name, "migration", c.id, "why", why)
}

// dropDriver undoes the driver's reception: nothing of the instance runs or stays here (a shared
// root stays: it is the source's).
func (e *Engine) dropDriver(ctx context.Context, c *incoming) {
	if c.root != nil {
		c.root.stop()
	}
	h := c.in.Record.Handle
	var err error
	switch c.post.Type {
	case api.TypeContainer:
		if st, serr := c.in.Driver.State(ctx, h); serr == nil && st != driver.StatusStopped && st != driver.StatusGone {
			c.in.Driver.Stop(ctx, h, driver.StopOpts{Force: true})
		}
		err = c.in.Driver.Delete(ctx, h)
	case api.TypeVM:
		if st, serr := c.in.Driver.State(ctx, h); serr == nil && (st == driver.StatusStopped || st == driver.StatusGone) {
			err = c.in.Driver.Delete(ctx, h) // made anew, or adopted, and never started
		} else if vd, verr := vmOf(c.in.Driver); verr == nil {
			err = vd.AbortIncoming(ctx, h)
		}
	}
	if err != nil {
		slog.Error("dropping an incoming instance left driver state", "instance", c.post.Name, "err", err)
	}
}

// end retires c with its final status.
func (e *Engine) end(c *incoming, status, msg string) {
	c.status = status
	c.closeRelay(status == api.MigrationCommitted)
	os.RemoveAll(c.dir)
	os.RemoveAll(c.run)
	e.mu.Lock()
	delete(e.incoming, c.id)
	e.finished[c.id] = finished{status: status, err: msg, at: time.Now()}
	for id, f := range e.finished {
		if time.Since(f.at) > time.Hour {
			delete(e.finished, id)
		}
	}
	e.mu.Unlock()
	close(c.stop)
}

// watch drops c when its source goes quiet: no word while preparing for IdleTimeout, no commit
// CommitTimeout after the restore.
func (e *Engine) watch(c *incoming) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if !c.mu.TryLock() {
			continue // a step is under way
		}
		idle := time.Since(time.Unix(0, c.lastActive.Load()))
		switch {
		case c.status == api.MigrationPreparing && idle > IdleTimeout:
			e.abortLocked(c, fmt.Errorf("no word from the source for %s", idle.Round(time.Second)))
		case c.status == api.MigrationRunning && time.Since(c.restoredAt) > CommitTimeout && (!c.lazy || idle > CommitTimeout):
			// A lazy copy waits for its pages as long as they come (the source commits after).
			e.abortLocked(c, fmt.Errorf("the source did not commit within %s", CommitTimeout))
		}
		c.mu.Unlock()
	}
}
