package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/trust"
)

// peerAPI serves the test API over mutual TLS too, with a trusted peer certificate.
type peerAPI struct {
	*testAPI
	tlsSrv *httptest.Server
	peer   *http.Client
	peerFP string
}

func newPeerAPI(t *testing.T, delay ...time.Duration) *peerAPI {
	t.Helper()
	a := newTestAPI(t, delay...)
	dir := t.TempDir()
	serverCert, err := trust.EnsureKeyPair(dir, "host")
	if err != nil {
		t.Fatal(err)
	}
	peerCert, err := trust.EnsureKeyPair(t.TempDir(), "peer")
	if err != nil {
		t.Fatal(err)
	}
	trusted := trust.Trusted{Dir: filepath.Join(dir, "trust")}
	if err := trusted.AddNamed(peerCert.Certificate[0], "peer"); err != nil {
		t.Fatal(err)
	}
	a.s.Trust = Trust{Trusted: trusted, Cert: serverCert}
	tlsSrv := httptest.NewUnstartedServer(a.s.Handler())
	tlsSrv.TLS = trusted.ServerConfig(serverCert)
	tlsSrv.Config.ConnContext = ConnContext
	tlsSrv.Config.ConnState = a.s.ConnState
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)
	peer := &http.Client{Transport: &http.Transport{
		TLSClientConfig: trust.PinnedClientConfig(serverCert, trust.Fingerprint(serverCert.Certificate[0]))}}
	peer.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{peerCert}
	return &peerAPI{testAPI: a, tlsSrv: tlsSrv, peer: peer, peerFP: trust.Fingerprint(peerCert.Certificate[0])}
}

func (p *peerAPI) peerDo(ctx context.Context, method, path string) (*http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, method, p.tlsSrv.URL+path, nil)
	return p.peer.Do(req)
}

// A trusted peer may not revoke anyone (itself included): that is the local administrator's call.
func TestRevokeIsLocalOnly(t *testing.T) {
	p := newPeerAPI(t)
	resp, err := p.peerDo(context.Background(), "DELETE", "/1.0/trust/"+p.peerFP)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("revoke over TLS: %d, want 403", resp.StatusCode)
	}
	if list, _ := p.s.Trust.Trusted.List(); len(list) != 1 {
		t.Fatalf("the certificate was removed by a peer: %+v", list)
	}
}

// Revoking a certificate cuts what it already has open: an event stream and an operation wait end
// at once, and the peer's next request is refused.
func TestRevokeCutsOpenConnections(t *testing.T) {
	p := newPeerAPI(t, time.Minute)
	body, _ := json.Marshal(api.InstancesPost{Name: "c1", Type: api.TypeContainer, Image: "busybox", Start: true})
	code, data := p.do("POST", "/1.0/instances", string(body))
	if code != http.StatusAccepted {
		t.Fatalf("create: %d %s", code, data)
	}
	var op api.Operation
	json.Unmarshal(data, &op)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	events, err := p.peerDo(ctx, "GET", "/1.0/events")
	if err != nil || events.StatusCode != http.StatusOK {
		t.Fatalf("events: %v %v", events, err)
	}
	defer events.Body.Close()
	ended := make(chan string, 2)
	go func() {
		sc := bufio.NewScanner(events.Body)
		for sc.Scan() {
		}
		ended <- "events"
	}()
	go func() {
		resp, err := p.peerDo(ctx, "GET", "/1.0/operations/"+op.ID+"/wait?timeout=60")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		ended <- "wait"
	}()
	// Both requests are in flight (the stream is open; the operation runs for a minute).
	deadline := time.Now().Add(5 * time.Second)
	for p.s.peers.count(p.peerFP) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("peer requests in flight: %d, want 2", p.s.peers.count(p.peerFP))
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case what := <-ended:
		t.Fatalf("%s ended before the revocation", what)
	case <-time.After(200 * time.Millisecond):
	}

	p.wantOK("DELETE", "/1.0/trust/"+p.peerFP)
	for range 2 {
		select {
		case <-ended:
		case <-time.After(3 * time.Second):
			t.Fatal("a revoked peer's request is still open 3 s after the revocation")
		}
	}
	resp, err := p.peerDo(ctx, "GET", "/1.0/instances")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("request after revocation: %d, want 403", resp.StatusCode)
	}
}

func (a *testAPI) wantOK(method, path string) {
	a.t.Helper()
	if code, data := a.do(method, path, ""); code != http.StatusOK {
		a.t.Fatalf("%s %s: %d %s", method, path, code, data)
	}
}

// An idle keep-alive connection of a revoked certificate is closed too, not left for its next request.
func TestRevokeClosesIdleConnections(t *testing.T) {
	p := newPeerAPI(t)
	tr := p.peer.Transport.(*http.Transport)
	conn, err := tls.Dial("tcp", p.tlsSrv.Listener.Addr().String(), tr.TLSClientConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /1.0 HTTP/1.1\r\nHost: tandem\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("request before the revocation: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	p.wantOK("DELETE", "/1.0/trust/"+p.peerFP)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the revoked peer's idle connection is still open 3 s after the revocation (read %d, %v)", n, err)
	}
}
