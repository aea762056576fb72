package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"tandem/api"
)

// TunnelUpgrade is the protocol a migration tunnel switches to: raw bytes both ways.
const TunnelUpgrade = "tandem-tunnel"

// MoveInstance moves an instance to a remote; it returns the operation.
func (c *Client) MoveInstance(ctx context.Context, name string, req api.InstanceMovePost) (*api.Operation, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Operation
	if err := c.do(ctx, http.MethodPost, instancePath(name)+"/move", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CopyInstance makes a new stopped instance from one, here or on a remote.
func (c *Client) CopyInstance(ctx context.Context, name string, req api.InstanceCopyPost) (*api.Operation, error) {
	if name == "" {
		return nil, errNoName
	}
	var out api.Operation
	if err := c.do(ctx, http.MethodPost, instancePath(name)+"/copy", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func migrationPath(id string) string { return "/1.0/migrations/" + url.PathEscape(id) }

// PrepareMigration asks a destination to get ready to receive an instance (host to host).
func (c *Client) PrepareMigration(ctx context.Context, req api.MigrationPost) (*api.MigrationInfo, error) {
	var out api.MigrationInfo
	if err := c.do(ctx, http.MethodPost, "/1.0/migrations", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetMigration asks a destination where an incoming migration stands.
func (c *Client) GetMigration(ctx context.Context, id string) (*api.MigrationInfo, error) {
	var out api.MigrationInfo
	if err := c.do(ctx, http.MethodGet, migrationPath(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// MigrationAction posts one step (restore, commit) of an incoming migration. body may be nil.
func (c *Client) MigrationAction(ctx context.Context, id, action string, body any) (*api.MigrationInfo, error) {
	var out api.MigrationInfo
	if err := c.do(ctx, http.MethodPost, migrationPath(id)+"/"+action, nil, body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// AbortMigration makes the destination drop everything of an incoming migration.
func (c *Client) AbortMigration(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, migrationPath(id), nil, nil, nil)
}

// OpenTunnel opens a raw byte stream to one of an incoming migration's endpoints on the
// destination (its QEMU's migration or NBD socket, its rsync). The connection outlives ctx only
// as far as the HTTP library allows: keep ctx alive while the tunnel is used.
func (c *Client) OpenTunnel(ctx context.Context, id, to string) (io.ReadWriteCloser, error) {
	h := http.Header{}
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", TunnelUpgrade)
	u := c.base + migrationPath(id) + "/tunnel?" + url.Values{"to": {to}}.Encode()
	resp, err := c.sendRaw(ctx, http.MethodPost, u, nil, 0, h)
	if err != nil {
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("tunnel to %s: the daemon did not switch protocols (status %d)", to, resp.StatusCode)
	}
	return rwc, nil
}
