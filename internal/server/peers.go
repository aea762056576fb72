package server

import (
	"context"
	"crypto/tls"
	"net"
	"sync"

	"tandem/internal/trust"
)

type connKey struct{}

// ConnContext is the http.Server hook that keeps each request's connection reachable, so that a
// revoked peer's connections can be closed (see peerConns).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// peerConns tracks the requests in flight per client certificate: revoking a certificate must cut
// the ones it already has (event streams, operation waits, exec, tunnels), not just refuse new ones.
// The zero value is ready to use.
type peerConns struct {
	mu   sync.Mutex
	byFP map[string]map[*peerRequest]struct{}
}

type peerRequest struct {
	conn   net.Conn // nil if the server was not given ConnContext
	cancel context.CancelFunc
}

// track registers a TLS request; the caller runs the request under the returned context and calls
// done when it ends. Requests without a client certificate are not tracked.
func (p *peerConns) track(ctx context.Context, state *tls.ConnectionState) (context.Context, func()) {
	if state == nil || len(state.PeerCertificates) == 0 {
		return ctx, func() {}
	}
	fp := trust.Fingerprint(state.PeerCertificates[0].Raw)
	ctx, cancel := context.WithCancel(ctx)
	req := &peerRequest{cancel: cancel}
	req.conn, _ = ctx.Value(connKey{}).(net.Conn)
	p.mu.Lock()
	if p.byFP == nil {
		p.byFP = map[string]map[*peerRequest]struct{}{}
	}
	if p.byFP[fp] == nil {
		p.byFP[fp] = map[*peerRequest]struct{}{}
	}
	p.byFP[fp][req] = struct{}{}
	p.mu.Unlock()
	return ctx, func() {
		p.mu.Lock()
		delete(p.byFP[fp], req)
		if len(p.byFP[fp]) == 0 {
			delete(p.byFP, fp)
		}
		p.mu.Unlock()
		cancel()
	}
}

// cut ends every request in flight of a certificate and closes its connections, and says how many.
func (p *peerConns) cut(fingerprint string) int {
	p.mu.Lock()
	reqs := p.byFP[fingerprint]
	delete(p.byFP, fingerprint)
	p.mu.Unlock()
	for req := range reqs {
		req.cancel()
		if req.conn != nil {
			closeRaw(req.conn)
		}
	}
	return len(reqs)
}

// closeRaw closes the connection under TLS: tls.Conn.Close would first try to send close_notify to
// a peer that may not be reading.
func closeRaw(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	c.Close()
}

// count says how many requests of a certificate are in flight.
func (p *peerConns) count(fingerprint string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byFP[fingerprint])
}
