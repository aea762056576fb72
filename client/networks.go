package client

import (
	"context"
	"net/http"
	"net/url"

	"tandem/api"
)

func networkPath(name string) string { return "/1.0/networks/" + url.PathEscape(name) }

// GetNetworks lists the managed networks.
func (c *Client) GetNetworks(ctx context.Context) ([]api.Network, error) {
	var out []api.Network
	err := c.do(ctx, http.MethodGet, "/1.0/networks", nil, nil, &out)
	return out, err
}

// GetNetwork returns one network.
func (c *Client) GetNetwork(ctx context.Context, name string) (*api.Network, error) {
	var out api.Network
	if err := c.do(ctx, http.MethodGet, networkPath(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateNetwork creates a network (bridge, NAT, DHCP, DNS).
func (c *Client) CreateNetwork(ctx context.Context, req api.NetworksPost) (*api.Network, error) {
	var out api.Network
	if err := c.do(ctx, http.MethodPost, "/1.0/networks", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteNetwork deletes a network no instance uses.
func (c *Client) DeleteNetwork(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, networkPath(name), nil, nil, nil)
}
