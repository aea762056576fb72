// Package trust holds a host's TLS identity and the certificates it trusts. Host-to-host and remote
// client calls use mutual TLS: a peer is let in only if its certificate's fingerprint is trusted.
package trust

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"tandem/internal/fsutil"
)

// EnsureKeyPair loads dir/server.crt and dir/server.key, creating a self-signed pair on first use.
func EnsureKeyPair(dir, commonName string) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		if err := generate(certPath, keyPath, commonName); err != nil {
			return tls.Certificate{}, fmt.Errorf("generate TLS key pair: %w", err)
		}
	}
	return tls.LoadX509KeyPair(certPath, keyPath)
}

func generate(certPath, keyPath, cn string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"tandem"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{cn, "localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	// Key first: a crash between the two writes leaves no certificate, so the pair is made again.
	if err := fsutil.WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// Fingerprint is the hex sha256 of a DER certificate.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Trusted is the set of client certificates let in, one PEM file per fingerprint in a directory.
type Trusted struct{ Dir string }

// Contains reports whether a DER certificate is trusted.
func (t Trusted) Contains(der []byte) bool {
	_, err := os.Stat(filepath.Join(t.Dir, Fingerprint(der)+".crt"))
	return err == nil
}

func writeCert(path string, pemData []byte) error {
	return fsutil.WriteFileAtomic(path, pemData, 0o600)
}

// ServerConfig is a TLS config that presents cert and asks every client for a certificate. Whether
// that certificate is trusted is checked per request (IsTrusted): an untrusted client may still present
// a join token, and nothing else.
func (t Trusted) ServerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.RequireAnyClientCert,
	}
}

// IsTrusted reports whether a TLS peer presented a trusted certificate.
func (t Trusted) IsTrusted(state *tls.ConnectionState) bool {
	return state != nil && len(state.PeerCertificates) > 0 && t.Contains(state.PeerCertificates[0].Raw)
}
