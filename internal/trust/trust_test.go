package trust

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

func TestPinnedMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCert, err := EnsureKeyPair(dir, "host1")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := EnsureKeyPair(dir, "host1")
	if Fingerprint(again.Certificate[0]) != Fingerprint(serverCert.Certificate[0]) {
		t.Fatal("key pair regenerated on second load")
	}
	clientCert, _ := EnsureKeyPair(t.TempDir(), "client")
	trusted := Trusted{Dir: filepath.Join(dir, "trust")}

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !trusted.IsTrusted(r.TLS) {
			http.Error(w, "untrusted", http.StatusForbidden)
			return
		}
		io.WriteString(w, "ok")
	}))
	srv.TLS = trusted.ServerConfig(serverCert)
	srv.StartTLS()
	defer srv.Close()
	get := func(pin string) (int, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: PinnedClientConfig(clientCert, pin)}}
		resp, err := c.Get(srv.URL)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	serverFP := Fingerprint(serverCert.Certificate[0])
	if code, _ := get(serverFP); code != http.StatusForbidden {
		t.Fatalf("untrusted client: %d", code)
	}
	if err := trusted.AddNamed(clientCert.Certificate[0], "client"); err != nil {
		t.Fatal(err)
	}
	if code, err := get(serverFP); code != http.StatusOK {
		t.Fatalf("trusted client: %d %v", code, err)
	}
	if _, err := get(Fingerprint(clientCert.Certificate[0])); err == nil {
		t.Fatal("a server with the wrong fingerprint was accepted")
	}
	list, _ := trusted.List()
	if len(list) != 1 || list[0].Name != "client" {
		t.Fatalf("list: %+v", list)
	}
	if _, err := trusted.Remove(list[0].Fingerprint[:12]); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(serverFP); code != http.StatusForbidden {
		t.Fatalf("revoked client: %d", code)
	}
}

func TestToken(t *testing.T) {
	secret, hash := NewSecret()
	tok := JoinToken{Secret: secret, Fingerprint: HashSecret("x"), Addresses: []string{"10.0.0.1:8443"}}
	back, err := DecodeToken(tok.Encode())
	if err != nil || back.Secret != secret || HashSecret(back.Secret) != hash {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{"", "!!!", "eyJ9", JoinToken{Secret: "s"}.Encode()} {
		if _, err := DecodeToken(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
