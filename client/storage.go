package client

import (
	"context"
	"net/http"
	"net/url"

	"tandem/api"
)

func storagePoolPath(pool string) string { return "/1.0/storage-pools/" + url.PathEscape(pool) }

// storageVolumePath addresses a volume by its ref: NAME (a custom volume) or TYPE/NAME, sent as one
// escaped path segment so that it can never be read as a sub-resource.
func storageVolumePath(pool, ref string) string {
	return storagePoolPath(pool) + "/volumes/" + url.PathEscape(ref)
}

// GetStoragePools lists the storage pools of the host.
func (c *Client) GetStoragePools(ctx context.Context) ([]api.StoragePool, error) {
	var out []api.StoragePool
	err := c.do(ctx, http.MethodGet, "/1.0/storage-pools", nil, nil, &out)
	return out, err
}

// GetStoragePool returns one storage pool with its space figures.
func (c *Client) GetStoragePool(ctx context.Context, name string) (*api.StoragePool, error) {
	var out api.StoragePool
	if err := c.do(ctx, http.MethodGet, storagePoolPath(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateStoragePool creates a pool (dir, btrfs or shared); it answers when the pool is ready.
func (c *Client) CreateStoragePool(ctx context.Context, req api.StoragePoolsPost) (*api.StoragePool, error) {
	var out api.StoragePool
	if err := c.do(ctx, http.MethodPost, "/1.0/storage-pools", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteStoragePool deletes a pool that holds no volumes.
func (c *Client) DeleteStoragePool(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, storagePoolPath(name), nil, nil, nil)
}

// GetStorageVolumes lists a pool's volumes of every type.
func (c *Client) GetStorageVolumes(ctx context.Context, pool string) ([]api.StorageVolume, error) {
	var out []api.StorageVolume
	err := c.do(ctx, http.MethodGet, storagePoolPath(pool)+"/volumes", nil, nil, &out)
	return out, err
}

// GetStorageVolume returns one volume by ref (NAME for a custom volume, or TYPE/NAME).
func (c *Client) GetStorageVolume(ctx context.Context, pool, ref string) (*api.StorageVolume, error) {
	var out api.StorageVolume
	if err := c.do(ctx, http.MethodGet, storageVolumePath(pool, ref), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// storageOp sends a request that answers 202 with an operation.
func (c *Client) storageOp(ctx context.Context, method, path string, in any) (*api.Operation, error) {
	var out api.Operation
	if err := c.do(ctx, method, path, nil, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateStorageVolume creates a custom volume; the operation's metadata names it ("pool", "volume").
func (c *Client) CreateStorageVolume(ctx context.Context, pool string, req api.StorageVolumesPost) (*api.Operation, error) {
	return c.storageOp(ctx, http.MethodPost, storagePoolPath(pool)+"/volumes", req)
}

// ResizeStorageVolume sets a volume's size ("2GiB" or a byte count).
func (c *Client) ResizeStorageVolume(ctx context.Context, pool, ref, size string) (*api.Operation, error) {
	return c.storageOp(ctx, http.MethodPatch, storageVolumePath(pool, ref), api.StorageVolumePatch{Size: size})
}

// DeleteStorageVolume deletes a volume and its snapshots; it is refused while the volume is attached.
func (c *Client) DeleteStorageVolume(ctx context.Context, pool, ref string) error {
	return c.do(ctx, http.MethodDelete, storageVolumePath(pool, ref), nil, nil, nil)
}

// GetStorageVolumeSnapshots lists a volume's snapshots, oldest first.
func (c *Client) GetStorageVolumeSnapshots(ctx context.Context, pool, ref string) ([]api.StorageSnapshot, error) {
	var out []api.StorageSnapshot
	err := c.do(ctx, http.MethodGet, storageVolumePath(pool, ref)+"/snapshots", nil, nil, &out)
	return out, err
}

// CreateStorageVolumeSnapshot records a volume's current data as snapshot snap.
func (c *Client) CreateStorageVolumeSnapshot(ctx context.Context, pool, ref, snap string) (*api.Operation, error) {
	return c.storageOp(ctx, http.MethodPost, storageVolumePath(pool, ref)+"/snapshots", api.StorageSnapshotsPost{Name: snap})
}

// DeleteStorageVolumeSnapshot removes one snapshot of a volume.
func (c *Client) DeleteStorageVolumeSnapshot(ctx context.Context, pool, ref, snap string) error {
	return c.do(ctx, http.MethodDelete, storageVolumePath(pool, ref)+"/snapshots/"+url.PathEscape(snap), nil, nil, nil)
}

// RestoreStorageVolume brings a volume's data back to snapshot snap (refused while it is in use).
func (c *Client) RestoreStorageVolume(ctx context.Context, pool, ref, snap string) (*api.Operation, error) {
	return c.storageOp(ctx, http.MethodPost, storageVolumePath(pool, ref)+"/restore", api.StorageVolumeRestorePost{Snapshot: snap})
}

// CopyStorageVolume copies a volume (without its snapshots) to targetPool as targetName (empty: the
// same name; TYPE/NAME sets the type). The operation reports progress and its metadata names the copy.
func (c *Client) CopyStorageVolume(ctx context.Context, pool, ref, targetPool, targetName string) (*api.Operation, error) {
	return c.storageOp(ctx, http.MethodPost, storageVolumePath(pool, ref)+"/copy",
		api.StorageVolumeCopyPost{TargetPool: targetPool, TargetName: targetName})
}
