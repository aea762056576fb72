package trust

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCert, err := EnsureKeyPair(filepath.Join(dir), "host1")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := EnsureKeyPair(dir, "host1")
	if Fingerprint(again.Certificate[0]) != Fingerprint(serverCert.Certificate[0]) {
		t.Fatal("key pair regenerated on second load")
	}
	clientCert, _ := EnsureKeyPair(filepath.Join(t.TempDir()), "client")
	trusted := Trusted{Dir: filepath.Join(dir, "trust")}

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.TLS = trusted.ServerConfig(serverCert)
	srv.StartTLS()
	defer srv.Close()
	client := func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{clientCert}, InsecureSkipVerify: true}}}
	}
	if _, err := client().Get(srv.URL); err == nil {
		t.Fatal("untrusted client got in")
	}
	if err := trusted.Add(clientCert.Certificate[0]); err != nil {
		t.Fatal(err)
	}
	resp, err := client().Get(srv.URL)
	if err != nil {
		t.Fatalf("trusted client refused: %v", err)
	}
	resp.Body.Close()
}
