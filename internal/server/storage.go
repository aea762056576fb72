package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/operations"
	"tandem/internal/storage"
	"tandem/internal/units"
)

// Storage endpoints. A volume is addressed by its ref: a bare NAME (a custom volume), or TYPE/NAME
// either as one escaped segment (custom%2Fdata, what the Go client sends) or as two segments
// (.../volumes/container/c1). The two-segment form is shadowed where it reads like a sub-resource:
// GET .../volumes/custom/snapshots lists the snapshots of volume "custom".
//
// Quick calls answer at once; those that copy or format data (volume create, resize, snapshot,
// restore, copy) answer 202 with an operation. Requests are checked before the operation starts,
// so that a bad name, an unknown pool or volume, a duplicate or an impossible size is an error of
// the call itself (400, 404, 409) rather than a failed operation.
func (s *Server) registerStorage(mux *http.ServeMux) {
	mux.HandleFunc("GET /1.0/storage-pools", s.listStoragePools)
	mux.HandleFunc("POST /1.0/storage-pools", s.createStoragePool)
	mux.HandleFunc("GET /1.0/storage-pools/{pool}", s.getStoragePool)
	mux.HandleFunc("DELETE /1.0/storage-pools/{pool}", s.deleteStoragePool)
	mux.HandleFunc("GET /1.0/storage-pools/{pool}/volumes", s.listStorageVolumes)
	mux.HandleFunc("POST /1.0/storage-pools/{pool}/volumes", s.createStorageVolume)
	for _, vol := range []string{"/1.0/storage-pools/{pool}/volumes/{name}", "/1.0/storage-pools/{pool}/volumes/{type}/{name}"} {
		mux.HandleFunc("GET "+vol, s.getStorageVolume)
		mux.HandleFunc("PATCH "+vol, s.patchStorageVolume)
		mux.HandleFunc("DELETE "+vol, s.deleteStorageVolume)
		mux.HandleFunc("GET "+vol+"/snapshots", s.listStorageSnapshots)
		mux.HandleFunc("POST "+vol+"/snapshots", s.createStorageSnapshot)
		mux.HandleFunc("DELETE "+vol+"/snapshots/{snap}", s.deleteStorageSnapshot)
		mux.HandleFunc("POST "+vol+"/restore", s.restoreStorageVolume)
		mux.HandleFunc("POST "+vol+"/copy", s.copyStorageVolume)
	}
}

func (s *Server) storageOrError(w http.ResponseWriter) bool {
	if s.Storage == nil {
		writeError(w, errdefs.Unavailable("storage is not set up on this host"))
		return false
	}
	return true
}

// storageVolumeRef is the ref a request names: NAME, or TYPE/NAME.
func storageVolumeRef(r *http.Request) string {
	if t := r.PathValue("type"); t != "" {
		return t + "/" + r.PathValue("name")
	}
	return r.PathValue("name")
}

func storagePoolPath(pool string) string { return "/1.0/storage-pools/" + pool }

func storageVolumePath(pool string, v *storage.Volume) string {
	return storagePoolPath(pool) + "/volumes/" + v.Type + "/" + v.Name
}

func (s *Server) storageEvent(action, source string) {
	if s.Events != nil {
		s.Events.Publish(api.EventLifecycle, api.LifecycleEvent{Action: action, Source: source})
	}
}

// --- pools ---

func (s *Server) storagePoolView(ctx context.Context, p *storage.Pool) api.StoragePool {
	v := api.StoragePool{Name: p.Name, Driver: p.Driver, Source: p.Source, Path: p.Path, Size: p.Size,
		Status: p.Status, Total: p.Total, Used: p.Used, Free: p.Free, CreatedAt: p.CreatedAt}
	if p.Status == "ok" {
		if vols, err := s.Storage.ListVolumes(ctx, p.Name); err == nil {
			v.Volumes = len(vols)
		}
	}
	return v
}

func (s *Server) listStoragePools(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	pools, err := s.Storage.ListPools(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := []api.StoragePool{}
	for i := range pools {
		out = append(out, s.storagePoolView(r.Context(), &pools[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createStoragePool(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	var req api.StoragePoolsPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	var size uint64
	if req.Size != "" {
		n, err := units.ParseSize(req.Size)
		if err != nil {
			writeError(w, errdefs.Invalid("pool size: %v", err))
			return
		}
		size = n
	}
	// Even a btrfs pool on a new loop file (mkfs, mount, quotas) takes well under a second: answered
	// synchronously, and not abandoned halfway if the client goes away.
	p, err := s.Storage.CreatePool(context.WithoutCancel(r.Context()), storage.PoolConfig{
		Name: req.Name, Driver: req.Driver, Source: req.Source, Size: size})
	if err != nil {
		writeError(w, err)
		return
	}
	s.storageEvent("storage-pool-created", storagePoolPath(p.Name))
	writeJSON(w, http.StatusCreated, s.storagePoolView(r.Context(), p))
}

func (s *Server) getStoragePool(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	p, err := s.Storage.GetPool(r.Context(), r.PathValue("pool"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.storagePoolView(r.Context(), p))
}

func (s *Server) deleteStoragePool(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	name := r.PathValue("pool")
	if err := s.Storage.DeletePool(context.WithoutCancel(r.Context()), name); err != nil {
		writeError(w, err)
		return
	}
	s.storageEvent("storage-pool-deleted", storagePoolPath(name))
	writeJSON(w, http.StatusOK, map[string]string{})
}

// storageUsablePool returns a pool that volumes can be made in now, or why not.
func (s *Server) storageUsablePool(ctx context.Context, name string) (*storage.Pool, error) {
	p, err := s.Storage.GetPool(ctx, name)
	if err != nil {
		return nil, err
	}
	switch {
	case p.Status == "ok":
		return p, nil
	case strings.HasPrefix(p.Status, "unavailable"):
		return nil, errdefs.Unavailable("storage pool %q is %s", name, p.Status)
	}
	return nil, errdefs.Conflict("storage pool %q is %s", name, p.Status)
}

// storageFits refuses a size the pool cannot hold now (storage checks again when it makes the volume).
func storageFits(p *storage.Pool, need uint64) error {
	if need > p.Free {
		return errdefs.Invalid("pool %q has %s free; %s does not fit", p.Name, units.FormatSize(p.Free), units.FormatSize(need))
	}
	return nil
}

// --- volumes ---

func storageVolumeView(v *storage.Volume) api.StorageVolume {
	out := api.StorageVolume{Name: v.Name, Type: v.Type, Pool: v.Pool, ContentType: v.ContentType, Format: v.Format,
		Size: v.Size, Usage: v.Usage, Base: v.Base, Snapshots: []string{}, UsedBy: []string{},
		Attachments: []api.StorageAttachment{}, State: v.State, CreatedAt: v.CreatedAt}
	for _, sn := range v.Snapshots {
		out.Snapshots = append(out.Snapshots, sn.Name)
	}
	for _, a := range v.UsedBy {
		out.UsedBy = append(out.UsedBy, a.Instance)
		out.Attachments = append(out.Attachments, api.StorageAttachment{Instance: a.Instance, ReadOnly: a.ReadOnly, Host: a.Host})
	}
	if v.Pending != nil {
		out.Pending = v.Pending.Op
	}
	return out
}

func (s *Server) listStorageVolumes(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	vols, err := s.Storage.ListVolumes(r.Context(), r.PathValue("pool"))
	if err != nil {
		writeError(w, err)
		return
	}
	out := []api.StorageVolume{}
	for i := range vols {
		out = append(out, storageVolumeView(&vols[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getStorageVolume(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	v, err := s.Storage.GetVolume(r.Context(), r.PathValue("pool"), storageVolumeRef(r))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, storageVolumeView(v))
}

// runStorageOp runs a slow volume call in an operation (its ctx carries the operation's progress).
func (s *Server) runStorageOp(desc string, resources []string, run func(ctx context.Context, op *operations.Op) error) *api.Operation {
	op := s.Operations.New(desc, resources...)
	return s.Operations.Run(op, run)
}

func (s *Server) createStorageVolume(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	var req api.StorageVolumesPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	pool := r.PathValue("pool")
	if err := storage.ValidateVolumeName("volume", req.Name); err != nil {
		writeError(w, err)
		return
	}
	switch req.ContentType {
	case "", storage.ContentFilesystem, storage.ContentBlock:
	default:
		writeError(w, errdefs.Invalid("unknown content type %q (filesystem, block)", req.ContentType))
		return
	}
	if req.Size == "" {
		writeError(w, errdefs.Invalid("volume %s needs a size (for example 1GiB)", req.Name))
		return
	}
	size, err := storage.ParseSize(req.Size)
	if err != nil {
		writeError(w, err)
		return
	}
	p, err := s.storageUsablePool(r.Context(), pool)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := storageFits(p, size); err != nil {
		writeError(w, err)
		return
	}
	if _, err := s.Storage.GetVolume(r.Context(), pool, req.Name); err == nil {
		writeError(w, errdefs.Exists("volume %s/%s already exists in pool %q", storage.TypeCustom, req.Name, pool))
		return
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		writeError(w, err)
		return
	}
	cfg := storage.VolumeConfig{Name: req.Name, Type: storage.TypeCustom, ContentType: req.ContentType, Size: size}
	src := storagePoolPath(pool) + "/volumes/" + storage.TypeCustom + "/" + req.Name
	writeOperation(w, s.runStorageOp("Creating volume "+req.Name+" in pool "+pool, []string{src},
		func(ctx context.Context, op *operations.Op) error {
			v, err := s.Storage.CreateVolume(ctx, pool, cfg)
			if err != nil {
				return err
			}
			op.SetMetadata("pool", pool)
			op.SetMetadata("volume", v.Ref())
			s.storageEvent("storage-volume-created", storageVolumePath(pool, v))
			return nil
		}))
}

func (s *Server) patchStorageVolume(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	var req api.StorageVolumePatch
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Size == "" {
		writeError(w, errdefs.Invalid("nothing to change: give a size"))
		return
	}
	size, err := storage.ParseSize(req.Size)
	if err != nil {
		writeError(w, err)
		return
	}
	pool, ref := r.PathValue("pool"), storageVolumeRef(r)
	p, err := s.storageUsablePool(r.Context(), pool)
	if err != nil {
		writeError(w, err)
		return
	}
	v, err := s.Storage.GetVolume(r.Context(), pool, ref)
	if err != nil {
		writeError(w, err)
		return
	}
	switch {
	case v.Format == storage.FormatDir:
		writeError(w, errdefs.Invalid("volume %s is a plain directory on pool %q and has no size limit; "+
			"only volumes created with a size can be resized", v.Ref(), pool))
		return
	case v.Format == storage.FormatQcow2 && size < v.Size:
		writeError(w, errdefs.Invalid("shrinking block volume %s would cut off data its guest may use; refused", v.Ref()))
		return
	case size > v.Size:
		if err := storageFits(p, size-v.Size); err != nil {
			writeError(w, err)
			return
		}
	}
	desc := "Resizing volume " + v.Ref() + " in pool " + pool + " to " + units.FormatSize(size)
	writeOperation(w, s.runStorageOp(desc, []string{storageVolumePath(pool, v)}, func(ctx context.Context, op *operations.Op) error {
		if err := s.Storage.ResizeVolume(ctx, pool, v.Ref(), size); err != nil {
			return err
		}
		s.storageEvent("storage-volume-resized", storageVolumePath(pool, v))
		return nil
	}))
}

func (s *Server) deleteStorageVolume(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	pool, ref := r.PathValue("pool"), storageVolumeRef(r)
	v, err := s.Storage.GetVolume(r.Context(), pool, ref)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.Storage.DeleteVolume(context.WithoutCancel(r.Context()), pool, v.Ref()); err != nil {
		writeError(w, err)
		return
	}
	s.storageEvent("storage-volume-deleted", storageVolumePath(pool, v))
	writeJSON(w, http.StatusOK, map[string]string{})
}

// --- snapshots, restore, copy ---

func (s *Server) listStorageSnapshots(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	v, err := s.Storage.GetVolume(r.Context(), r.PathValue("pool"), storageVolumeRef(r))
	if err != nil {
		writeError(w, err)
		return
	}
	out := []api.StorageSnapshot{}
	for _, sn := range v.Snapshots {
		out = append(out, api.StorageSnapshot{Name: sn.Name, Size: sn.Size, CreatedAt: sn.CreatedAt})
	}
	writeJSON(w, http.StatusOK, out)
}

func storageHasSnapshot(v *storage.Volume, name string) bool {
	return slices.ContainsFunc(v.Snapshots, func(s storage.Snapshot) bool { return s.Name == name })
}

func (s *Server) createStorageSnapshot(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	var req api.StorageSnapshotsPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := storage.ValidateVolumeName("snapshot", req.Name); err != nil {
		writeError(w, err)
		return
	}
	pool := r.PathValue("pool")
	v, err := s.Storage.GetVolume(r.Context(), pool, storageVolumeRef(r))
	if err != nil {
		writeError(w, err)
		return
	}
	if storageHasSnapshot(v, req.Name) {
		writeError(w, errdefs.Exists("volume %s already has a snapshot %q", v.Ref(), req.Name))
		return
	}
	desc := "Snapshotting volume " + v.Ref() + " in pool " + pool + " as " + req.Name
	writeOperation(w, s.runStorageOp(desc, []string{storageVolumePath(pool, v)}, func(ctx context.Context, op *operations.Op) error {
		if err := s.Storage.SnapshotVolume(ctx, pool, v.Ref(), req.Name); err != nil {
			return err
		}
		op.SetMetadata("snapshot", req.Name)
		s.storageEvent("storage-volume-snapshot-created", storageVolumePath(pool, v)+"/snapshots/"+req.Name)
		return nil
	}))
}

func (s *Server) deleteStorageSnapshot(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	pool, snap := r.PathValue("pool"), r.PathValue("snap")
	v, err := s.Storage.GetVolume(r.Context(), pool, storageVolumeRef(r))
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.Storage.DeleteSnapshot(context.WithoutCancel(r.Context()), pool, v.Ref(), snap); err != nil {
		writeError(w, err)
		return
	}
	s.storageEvent("storage-volume-snapshot-deleted", storageVolumePath(pool, v)+"/snapshots/"+snap)
	writeJSON(w, http.StatusOK, map[string]string{})
}

func (s *Server) restoreStorageVolume(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	var req api.StorageVolumeRestorePost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Snapshot == "" {
		writeError(w, errdefs.Invalid("restore needs a snapshot name"))
		return
	}
	pool := r.PathValue("pool")
	v, err := s.Storage.GetVolume(r.Context(), pool, storageVolumeRef(r))
	if err != nil {
		writeError(w, err)
		return
	}
	if !storageHasSnapshot(v, req.Snapshot) {
		writeError(w, errdefs.NotFound("volume %s has no snapshot %q", v.Ref(), req.Snapshot))
		return
	}
	desc := "Restoring volume " + v.Ref() + " in pool " + pool + " from " + req.Snapshot
	writeOperation(w, s.runStorageOp(desc, []string{storageVolumePath(pool, v)}, func(ctx context.Context, op *operations.Op) error {
		if err := s.Storage.RestoreVolume(ctx, pool, v.Ref(), req.Snapshot); err != nil {
			return err
		}
		s.storageEvent("storage-volume-restored", storageVolumePath(pool, v))
		return nil
	}))
}

func (s *Server) copyStorageVolume(w http.ResponseWriter, r *http.Request) {
	if !s.storageOrError(w) {
		return
	}
	var req api.StorageVolumeCopyPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.TargetPool == "" {
		writeError(w, errdefs.Invalid("copy needs a target_pool"))
		return
	}
	pool := r.PathValue("pool")
	src, err := s.Storage.GetVolume(r.Context(), pool, storageVolumeRef(r))
	if err != nil {
		writeError(w, err)
		return
	}
	if _, err := s.storageUsablePool(r.Context(), req.TargetPool); err != nil {
		writeError(w, err)
		return
	}
	// The target keeps the source's type unless target_name gives one (TYPE/NAME).
	target := src.Type + "/" + src.Name
	switch {
	case strings.Contains(req.TargetName, "/"):
		target = req.TargetName
	case req.TargetName != "":
		target = src.Type + "/" + req.TargetName
	}
	if strings.HasPrefix(target, storage.TypeImage+"/") {
		writeError(w, errdefs.Invalid("image volumes cannot be copied by hand: give target_name as NAME or TYPE/NAME (custom, container, vm)"))
		return
	}
	if _, err := s.Storage.GetVolume(r.Context(), req.TargetPool, target); err == nil {
		writeError(w, errdefs.Exists("volume %s already exists in pool %q", target, req.TargetPool))
		return
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		writeError(w, err)
		return
	}
	desc := "Copying volume " + src.Ref() + " in pool " + pool + " to " + target + " in pool " + req.TargetPool
	res := []string{storageVolumePath(pool, src), storagePoolPath(req.TargetPool) + "/volumes/" + target}
	writeOperation(w, s.runStorageOp(desc, res, func(ctx context.Context, op *operations.Op) error {
		v, err := s.Storage.CopyVolume(ctx, pool, src.Ref(), req.TargetPool, target)
		if err != nil {
			return err
		}
		op.SetMetadata("pool", req.TargetPool)
		op.SetMetadata("volume", v.Ref())
		s.storageEvent("storage-volume-created", storageVolumePath(req.TargetPool, v))
		return nil
	}))
}
