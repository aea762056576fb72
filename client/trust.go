package client

import (
	"context"
	"net/http"
	"net/url"

	"tandem/api"
)

// CreateTrustToken issues a one-time token that lets the named host join.
func (c *Client) CreateTrustToken(ctx context.Context, name string) (*api.TrustToken, error) {
	var out api.TrustToken
	if err := c.do(ctx, http.MethodPost, "/1.0/trust/tokens", nil, api.TrustTokensPost{Name: name}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// JoinTrust presents a token's secret over TLS: the server then trusts this client's certificate.
func (c *Client) JoinTrust(ctx context.Context, secret string) error {
	return c.do(ctx, http.MethodPost, "/1.0/trust", nil, api.TrustPost{Secret: secret}, nil)
}

// GetTrusted lists the certificates the host trusts.
func (c *Client) GetTrusted(ctx context.Context) ([]api.TrustedCertificate, error) {
	var out []api.TrustedCertificate
	err := c.do(ctx, http.MethodGet, "/1.0/trust", nil, nil, &out)
	return out, err
}

// RevokeTrust stops trusting a certificate (fingerprint or a 12+ character prefix).
func (c *Client) RevokeTrust(ctx context.Context, fingerprint string) error {
	return c.do(ctx, http.MethodDelete, "/1.0/trust/"+url.PathEscape(fingerprint), nil, nil, nil)
}

// GetRemotes lists the hosts this one can call.
func (c *Client) GetRemotes(ctx context.Context) ([]api.Remote, error) {
	var out []api.Remote
	err := c.do(ctx, http.MethodGet, "/1.0/remotes", nil, nil, &out)
	return out, err
}

// AddRemote makes the daemon join another host with a token that host issued.
func (c *Client) AddRemote(ctx context.Context, req api.RemotesPost) (*api.Remote, error) {
	var out api.Remote
	if err := c.do(ctx, http.MethodPost, "/1.0/remotes", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DeleteRemote forgets a remote.
func (c *Client) DeleteRemote(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/1.0/remotes/"+url.PathEscape(name), nil, nil, nil)
}
