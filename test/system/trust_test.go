package system

import (
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/api"
	"tandem/client"
	"tandem/internal/testenv"
	"tandem/internal/trust"
)

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Two hosts: B issues a token, A joins with it over mutual TLS; a used token, a wrong token and a
// revoked certificate get nothing.
func TestTrustAndRemotes(t *testing.T) {
	addrA, addrB := freePort(t), freePort(t)
	a := startDaemon(t, "--driver", "fake", "--network=false", "--listen", addrA)
	b := startDaemon(t, "--driver", "fake", "--network=false", "--listen", addrB)

	token := strings.TrimSpace(b.must("trust", "add", "host-a"))
	if _, errOut, err := a.tandem("remote", "add", "host-b", "https://"+addrB, "--token", "garbage"); err == nil || !strings.Contains(errOut, "token") {
		t.Fatalf("garbage token: %v %s", err, errOut)
	}
	a.must("remote", "add", "host-b", "https://"+addrB, "--token", token)
	var remotes []api.Remote
	json.Unmarshal([]byte(a.must("remote", "list", "--format", "json")), &remotes)
	if len(remotes) != 1 || remotes[0].Name != "host-b" || len(remotes[0].Fingerprint) != 64 {
		t.Fatalf("remotes: %+v", remotes)
	}
	var trusted []api.TrustedCertificate
	json.Unmarshal([]byte(b.must("trust", "list", "--format", "json")), &trusted)
	if len(trusted) != 1 || trusted[0].Name != "host-a" {
		t.Fatalf("trusted on b: %+v", trusted)
	}
	// The token worked once: C cannot reuse it.
	c := startDaemon(t, "--driver", "fake", "--network=false")
	if _, errOut, err := c.tandem("remote", "add", "host-b", "https://"+addrB, "--token", token); err == nil || !strings.Contains(errOut, "used or expired") {
		t.Fatalf("reused token: %v %s", err, errOut)
	}
	// A's token cannot make A trust itself, and a name clash is refused.
	selfTok := strings.TrimSpace(a.must("trust", "add", "x"))
	if _, errOut, err := a.tandem("remote", "add", "self", "https://"+addrA, "--token", selfTok); err == nil || !strings.Contains(errOut, "this host") {
		t.Fatalf("self join: %v %s", err, errOut)
	}
	tok2 := strings.TrimSpace(b.must("trust", "add", "host-a2"))
	if _, errOut, err := a.tandem("remote", "add", "host-b", "https://"+addrB, "--token", tok2); err == nil || !strings.Contains(errOut, "already exists") {
		t.Fatalf("duplicate remote: %v %s", err, errOut)
	}
	// Revoked: B's trust store no longer has A.
	b.must("trust", "remove", trusted[0].Fingerprint)
	json.Unmarshal([]byte(b.must("trust", "list", "--format", "json")), &trusted)
	if len(trusted) != 0 {
		t.Fatalf("after revoke: %+v", trusted)
	}
}

// A peer's event stream, opened before its certificate is revoked, ends at the revocation; the peer
// cannot revoke anyone itself (a trusted peer must not lock out another).
func TestTrustRevokeCutsEventStream(t *testing.T) {
	addrA, addrB := freePort(t), freePort(t)
	a := startDaemon(t, "--driver", "fake", "--network=false", "--listen", addrA)
	b := startDaemon(t, "--driver", "fake", "--network=false", "--listen", addrB)
	a.must("remote", "add", "host-b", "https://"+addrB, "--token", strings.TrimSpace(b.must("trust", "add", "host-a")))
	var remotes []api.Remote
	json.Unmarshal([]byte(a.must("remote", "list", "--format", "json")), &remotes)
	if len(remotes) != 1 {
		t.Fatalf("remotes: %+v", remotes)
	}
	// A's own identity, as A's daemon uses it towards B.
	certA, err := trust.EnsureKeyPair(a.dir, "unused")
	if err != nil {
		t.Fatal(err)
	}
	toB, err := client.NewHTTPS("https://"+addrB, trust.PinnedClientConfig(certA, remotes[0].Fingerprint))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testenv.Context(t, time.Minute)
	if err := toB.RevokeTrust(ctx, trust.Fingerprint(certA.Certificate[0])); err == nil || !strings.Contains(err.Error(), "local administrator") {
		t.Fatalf("a peer revoked a certificate over TLS: %v", err)
	}

	streamErr := make(chan error, 1)
	opened := make(chan struct{})
	go func() {
		var once sync.Once
		streamErr <- toB.GetEvents(ctx, nil, func(ev api.Event) error { once.Do(func() { close(opened) }); return nil })
	}()
	// An event proves the stream is open.
	b.must("storage", "volume", "create", "default", "v1", "--size", "4MiB")
	select {
	case <-opened:
	case err := <-streamErr:
		t.Fatalf("event stream ended before the revocation: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("no event on the peer's stream in 20 s")
	}
	b.must("trust", "remove", trust.Fingerprint(certA.Certificate[0]))
	start := time.Now()
	select {
	case err := <-streamErr:
		t.Logf("stream ended %v after the revocation: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		t.Fatal("the revoked peer's event stream still runs 5 s after trust remove")
	}
	if _, err := toB.GetTrusted(ctx); err == nil || !strings.Contains(err.Error(), "not trusted") {
		t.Fatalf("request after revocation: %v", err)
	}
}
