package trust

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// JoinToken is what `tandem trust add` prints: enough for another host to reach this one, check it
// is talking to the right host (the certificate fingerprint), and prove it was invited (the secret).
type JoinToken struct {
	Secret      string   `json:"secret"`
	Fingerprint string   `json:"fingerprint"`
	Addresses   []string `json:"addresses,omitempty"`
}

// NewSecret returns a random secret and the hash under which it is stored.
func NewSecret() (secret, hash string) {
	b := make([]byte, 32)
	rand.Read(b)
	secret = hex.EncodeToString(b)
	return secret, HashSecret(secret)
}

// HashSecret is how secrets are kept: a leaked state file gives no usable token.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Encode turns a token into one copy-pastable word.
func (t JoinToken) Encode() string {
	data, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(data)
}

// DecodeToken parses what Encode made.
func DecodeToken(s string) (JoinToken, error) {
	var t JoinToken
	data, err := base64.RawURLEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || json.Unmarshal(data, &t) != nil || t.Secret == "" || len(t.Fingerprint) != 64 {
		return t, errors.New("not a tandem join token")
	}
	return t, nil
}

// PinnedClientConfig presents cert and accepts only a server whose certificate has the given
// fingerprint: hosts use self-signed certificates, so the pin is what authenticates the server.
func PinnedClientConfig(cert tls.Certificate, fingerprint string) *tls.Config {
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || Fingerprint(raw[0]) != fingerprint {
				return fmt.Errorf("server certificate does not match the pinned fingerprint %s", fingerprint)
			}
			return nil
		},
	}
}

// Entry is one trusted certificate.
type Entry struct {
	Fingerprint string `json:"fingerprint"`
	Name        string `json:"name"`
}

// AddNamed trusts a DER certificate under a name (kept as a PEM header).
func (t Trusted) AddNamed(der []byte, name string) error {
	if err := os.MkdirAll(t.Dir, 0o700); err != nil {
		return err
	}
	block := &pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"Name": name}, Bytes: der}
	return writeCert(filepath.Join(t.Dir, Fingerprint(der)+".crt"), pem.EncodeToMemory(block))
}

// List returns the trusted certificates.
func (t Trusted) List() ([]Entry, error) {
	files, err := filepath.Glob(filepath.Join(t.Dir, "*.crt"))
	if err != nil {
		return nil, err
	}
	out := []Entry{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		block, _ := pem.Decode(data)
		if block == nil {
			continue
		}
		out = append(out, Entry{Fingerprint: Fingerprint(block.Bytes), Name: block.Headers["Name"]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove revokes a certificate by fingerprint (or a unique prefix of at least 12 characters).
func (t Trusted) Remove(fp string) (Entry, error) {
	entries, err := t.List()
	if err != nil {
		return Entry{}, err
	}
	var match []Entry
	for _, e := range entries {
		if e.Fingerprint == fp || (len(fp) >= 12 && strings.HasPrefix(e.Fingerprint, fp)) {
			match = append(match, e)
		}
	}
	if len(match) != 1 {
		return Entry{}, fmt.Errorf("%d trusted certificates match %q", len(match), fp)
	}
	return match[0], os.Remove(filepath.Join(t.Dir, match[0].Fingerprint+".crt"))
}
