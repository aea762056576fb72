package client

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"

	"tandem/api"
)

// instancePath escapes the name so that a stray "/" or "?" cannot address another route.
func instancePath(name string) string {
	return "/1.0/instances/" + url.PathEscape(name)
}

// errNoName stops a request with an empty name before it turns into a request on the collection.
var errNoName = errors.New("instance name is empty")

// GetInstances lists every instance on the host.
func (c *Client) GetInstances(ctx context.Context) ([]api.Instance, error) {
	var out []api.Instance
	if err := c.do(ctx, http.MethodGet, "/1.0/instances", nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetInstance returns one instance.
func (c *Client) GetInstance(ctx context.Context, name string) (*api.Instance, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Instance
	if err := c.do(ctx, http.MethodGet, instancePath(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateInstance creates an instance (and starts it when req.Start is set); it returns the operation.
func (c *Client) CreateInstance(ctx context.Context, req api.InstancesPost) (*api.Operation, error) {
	if req.Name == "" {
		return nil, errNoName
	}
	var out api.Operation
	if err := c.do(ctx, http.MethodPost, "/1.0/instances", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateInstance replaces an instance's config and devices whole.
func (c *Client) UpdateInstance(ctx context.Context, name string, req api.InstancePut) (*api.Instance, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Instance
	if err := c.do(ctx, http.MethodPut, instancePath(name), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PatchInstance changes only the config keys and devices named in req (nil values remove).
func (c *Client) PatchInstance(ctx context.Context, name string, req api.InstancePatch) (*api.Instance, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Instance
	if err := c.do(ctx, http.MethodPatch, instancePath(name), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteInstance deletes an instance; force stops a running one first instead of refusing.
func (c *Client) DeleteInstance(ctx context.Context, name string, force bool) (*api.Operation, error) {
	if name == "" {
		return nil, errNoName
	}
	q := url.Values{"force": {strconv.FormatBool(force)}}
	var out api.Operation
	if err := c.do(ctx, http.MethodDelete, instancePath(name), q, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateInstanceState asks for a power change (start, stop, restart, pause, resume).
func (c *Client) UpdateInstanceState(ctx context.Context, name string, req api.InstanceStatePut) (*api.Operation, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Operation
	if err := c.do(ctx, http.MethodPut, instancePath(name)+"/state", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetInstanceSnapshots lists an instance's snapshots, oldest first.
func (c *Client) GetInstanceSnapshots(ctx context.Context, name string) ([]api.InstanceSnapshot, error) {
	if name == "" {
		return nil, errNoName
	}
	var out []api.InstanceSnapshot
	if err := c.do(ctx, http.MethodGet, instancePath(name)+"/snapshots", nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// CreateInstanceSnapshot snapshots an instance (with its memory, when req.Stateful).
func (c *Client) CreateInstanceSnapshot(ctx context.Context, name string, req api.InstanceSnapshotsPost) (*api.Operation, error) {
	return c.instanceOp(ctx, http.MethodPost, name, "/snapshots", req)
}

// RestoreInstanceSnapshot brings an instance back to a snapshot (a running one is restarted).
func (c *Client) RestoreInstanceSnapshot(ctx context.Context, name, snap string) (*api.Operation, error) {
	return c.instanceOp(ctx, http.MethodPost, name, "/snapshots/"+url.PathEscape(snap)+"/restore", nil)
}

// DeleteInstanceSnapshot removes an instance's snapshot.
func (c *Client) DeleteInstanceSnapshot(ctx context.Context, name, snap string) (*api.Operation, error) {
	return c.instanceOp(ctx, http.MethodDelete, name, "/snapshots/"+url.PathEscape(snap), nil)
}

// instanceOp sends a request on an instance's sub-resource that answers with an operation.
func (c *Client) instanceOp(ctx context.Context, method, name, sub string, body any) (*api.Operation, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Operation
	if err := c.do(ctx, method, instancePath(name)+sub, nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
