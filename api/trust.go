package api

import "time"

// TrustTokensPost is the body of POST /1.0/trust/tokens: invite a client (another host) by name.
type TrustTokensPost struct {
	Name string `json:"name"`
}

// TrustToken is a one-time join token, valid until ExpiresAt.
type TrustToken struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// TrustPost is the body of POST /1.0/trust, sent over TLS by a host joining with a token: the
// certificate it presents becomes trusted.
type TrustPost struct {
	Secret string `json:"secret"`
}

// TrustedCertificate is one entry of GET /1.0/trust.
type TrustedCertificate struct {
	Fingerprint string `json:"fingerprint" yaml:"fingerprint"`
	Name        string `json:"name" yaml:"name"`
}

// Remote is another host this one can call.
type Remote struct {
	Name        string    `json:"name" yaml:"name"`
	URL         string    `json:"url" yaml:"url"`
	Fingerprint string    `json:"fingerprint" yaml:"fingerprint"`
	AddedAt     time.Time `json:"added_at" yaml:"added_at"`
}

// RemotesPost is the body of POST /1.0/remotes: trust another host with a token it issued.
type RemotesPost struct {
	Name  string `json:"name"`
	URL   string `json:"url"` // https://ADDR:PORT; empty: the first address in the token
	Token string `json:"token"`
}
