// Package client is the Go client of the tandem REST API. The CLI and the tests use it; it speaks to
// tandemd over its unix socket, or over HTTPS for a remote host.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/api"
)

// SocketName is the name of the daemon's unix socket inside its state directory.
const SocketName = "unix.socket"

// DefaultDir is the daemon's state directory when neither TANDEM_DIR nor --dir says otherwise.
const DefaultDir = "/var/lib/tandem"

// maxSocketPath is the longest path a unix socket address can hold (sun_path is 108 bytes with the NUL).
const maxSocketPath = 107

// Body size limits: a response is read into memory whole, so a confused or hostile server must not be
// able to make us allocate without bound. Listings of many instances still fit easily.
const (
	maxResponseBody = 32 << 20
	maxErrorBody    = 64 << 10
	maxEventLine    = 4 << 20
)

// Client talks to one tandemd. It is safe for concurrent use.
type Client struct {
	http *http.Client
	base string // scheme://host, without a trailing slash
	// target names the daemon in errors: the socket path or the URL.
	target string
	unix   bool
}

// StatusError is an error answered by the server. Error() is the server's message alone, so that the
// CLI can print it as is; Code is the HTTP status.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string { return e.Message }

// IsStatus reports whether err is (or wraps) a StatusError with the given HTTP status.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// ErrUnreachable is wrapped by errors that mean the daemon could not be reached at all.
var ErrUnreachable = errors.New("cannot reach tandemd")

// unreachableError keeps the network error for errors.Is/As while printing one readable sentence.
type unreachableError struct {
	msg string
	err error
}

func (e *unreachableError) Error() string   { return e.msg }
func (e *unreachableError) Unwrap() []error { return []error{ErrUnreachable, e.err} }

// dialError marks a failure to connect, as opposed to a failure later in the exchange.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// New returns a client for the daemon whose state directory is dir (DefaultDir when empty).
func New(dir string) (*Client, error) {
	if dir == "" {
		dir = DefaultDir
	}
	sock := filepath.Join(dir, SocketName)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s is %d bytes, longer than the %d a unix socket allows: use a shorter directory",
			sock, len(sock), maxSocketPath)
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, &dialError{err}
			}
			return c, nil
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	// No overall http.Client timeout: the event stream and waits are long by design; callers bound
	// calls with their context.
	return &Client{http: &http.Client{Transport: tr}, base: "http://tandem", target: sock, unix: true}, nil
}

// NewHTTPS returns a client for a remote daemon at rawURL (https://host:port), authenticating with the
// client certificate in tlsConfig.
func NewHTTPS(rawURL string, tlsConfig *tls.Config) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid url %q: %w", rawURL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("invalid url %q: want https://host[:port]", rawURL)
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, &dialError{err}
			}
			return c, nil
		},
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        4,
		IdleConnTimeout:     30 * time.Second,
	}
	base := u.Scheme + "://" + u.Host
	return &Client{http: &http.Client{Transport: tr}, base: base, target: base}, nil
}

// Target names the daemon this client talks to: its socket path or its URL.
func (c *Client) Target() string { return c.target }

// send performs one request and returns the response when its status is 2xx; any other status is
// turned into a *StatusError. The caller closes the body.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, in any) (*http.Response, error) {
	var body io.Reader
	header := http.Header{}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
		header.Set("Content-Type", "application/json")
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	return c.sendRaw(ctx, method, u, body, -1, header)
}

// sendRaw sends body as is (size -1 if unknown) with the given headers; non-2xx becomes a StatusError.
func (c *Client) sendRaw(ctx context.Context, method, u string, body io.Reader, size int64, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if size >= 0 {
		req.ContentLength = size
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "tandem-client/1.0")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err)
	}
	// 101: the connection now carries an exec or console stream (resp.Body reads and writes it).
	if resp.StatusCode != http.StatusSwitchingProtocols && (resp.StatusCode < 200 || resp.StatusCode > 299) {
		defer resp.Body.Close()
		return nil, statusError(resp)
	}
	return resp, nil
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	resp, err := c.send(ctx, method, path, query, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
		return nil
	}
	lr := &io.LimitedReader{R: resp.Body, N: maxResponseBody + 1}
	if err := json.NewDecoder(lr).Decode(out); err != nil {
		if lr.N <= 0 {
			return fmt.Errorf("%s %s: response larger than %d bytes", method, path, maxResponseBody)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s %s: invalid response: %w", method, path, err)
	}
	return nil
}

// transportError turns a failed round trip into something a user can act on.
func (c *Client) transportError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var de *dialError
	if errors.As(err, &de) {
		switch {
		case errors.Is(de.err, syscall.EACCES):
			return &unreachableError{msg: fmt.Sprintf("cannot reach tandemd at %s: permission denied", c.target), err: de.err}
		case c.unix:
			return &unreachableError{msg: fmt.Sprintf("cannot reach tandemd at %s: is it running?", c.target), err: de.err}
		default:
			return &unreachableError{msg: fmt.Sprintf("cannot reach tandemd at %s: %v", c.target, de.err), err: de.err}
		}
	}
	return fmt.Errorf("talking to tandemd at %s: %w", c.target, err)
}

// statusError reads an error body; it falls back on the raw text or the status text when the body is
// not an api.Error (a proxy, or a daemon bug).
func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var e api.Error
	msg := ""
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		msg = e.Error
	} else if t := strings.TrimSpace(string(b)); t != "" && !strings.HasPrefix(t, "{") {
		msg = t
	}
	if msg == "" {
		msg = strings.ToLower(http.StatusText(resp.StatusCode))
		if msg == "" {
			msg = fmt.Sprintf("unexpected status %d", resp.StatusCode)
		}
	}
	return &StatusError{Code: resp.StatusCode, Message: msg}
}

// GetServer returns GET /1.0: the API version and whatever else the daemon says about itself.
func (c *Client) GetServer(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	if err := c.do(ctx, http.MethodGet, "/1.0", nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetOrphans lists what the host has that the daemon has no instance record for.
func (c *Client) GetOrphans(ctx context.Context) ([]api.Orphan, error) {
	var out []api.Orphan
	if err := c.do(ctx, http.MethodGet, "/1.0/host/orphans", nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetHost returns what the host is and what it can run.
func (c *Client) GetHost(ctx context.Context) (*api.Host, error) {
	var out api.Host
	if err := c.do(ctx, http.MethodGet, "/1.0/host", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
