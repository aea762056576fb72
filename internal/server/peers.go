package server

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"

	"tandem/internal/trust"
)

type connKey struct{}

// ConnContext is the http.Server hook that keeps each request's connection reachable, so that a
// revoked peer's connections can be closed (see peerConns).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// ConnState is the http.Server hook that keeps each TLS connection under its client's certificate,
// idle keep-alive ones included, so that a revocation closes them all.
func (s *Server) ConnState(c net.Conn, state http.ConnState) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return
	}
	switch state {
	case http.StateActive: // a request has begun: the handshake is done
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			s.peers.addConn(trust.Fingerprint(certs[0].Raw), c)
		}
	case http.StateClosed, http.StateHijacked: // a hijacked one is its request's (track)
		s.peers.removeConn(c)
	}
}

// peerConns tracks, per client certificate, the open connections and the requests in flight:
// revoking a certificate must cut what it already has (event streams, operation waits, exec,
// tunnels, idle connections), not just refuse new requests. The zero value is ready to use.
type peerConns struct {
	mu    sync.Mutex
	byFP  map[string]map[*peerRequest]struct{}
	conns map[net.Conn]string // open connections and their client's fingerprint
}

func (p *peerConns) addConn(fp string, c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = map[net.Conn]string{}
	}
	p.conns[c] = fp
}

func (p *peerConns) removeConn(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
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

// cut ends every request in flight of a certificate and closes all its connections, and says how
// many connections and requests there were.
func (p *peerConns) cut(fingerprint string) int {
	p.mu.Lock()
	reqs := p.byFP[fingerprint]
	delete(p.byFP, fingerprint)
	var conns []net.Conn
	for c, fp := range p.conns {
		if fp == fingerprint {
			conns = append(conns, c)
			delete(p.conns, c)
		}
	}
	p.mu.Unlock()
	for req := range reqs {
		req.cancel()
		if req.conn != nil {
			closeRaw(req.conn)
		}
	}
	for _, c := range conns {
		closeRaw(c)
	}
	return len(reqs) + len(conns)
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
