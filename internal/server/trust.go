package server

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/google/uuid"

	"tandem/api"
	"tandem/client"
	"tandem/internal/errdefs"
	"tandem/internal/instance"
	"tandem/internal/store"
	"tandem/internal/trust"
)

// tokenLifetime bounds how long an invitation stays usable.
const tokenLifetime = time.Hour

// Trust is what the trust and remotes endpoints need.
type Trust struct {
	Store   *store.Store
	Trusted trust.Trusted
	Cert    tls.Certificate // this host's identity, as server and as client of other hosts
	// Addresses are where this host serves HTTPS, written into tokens.
	Addresses []string
}

func (s *Server) registerTrust(mux *http.ServeMux) {
	mux.HandleFunc("POST /1.0/trust/tokens", s.localOnly(s.createToken))
	mux.HandleFunc("GET /1.0/trust", s.listTrusted)
	mux.HandleFunc("POST /1.0/trust", s.joinWithToken)
	mux.HandleFunc("DELETE /1.0/trust/{fingerprint}", s.localOnly(s.revokeTrust))
	mux.HandleFunc("GET /1.0/remotes", s.listRemotes)
	mux.HandleFunc("POST /1.0/remotes", s.localOnly(s.addRemote))
	mux.HandleFunc("DELETE /1.0/remotes/{name}", s.localOnly(s.deleteRemote))
}

// authorize admits every request on the unix socket (root only), and over TLS only trusted
// certificates, except a join with a token. A TLS request is tracked before its certificate is
// checked, so a revocation that lands after the check still finds and cuts it.
func (s *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, done := s.peers.track(r.Context(), r.TLS)
		defer done()
		r = r.WithContext(ctx)
		if r.TLS != nil && !s.Trust.Trusted.IsTrusted(r.TLS) && !(r.Method == http.MethodPost && r.URL.Path == "/1.0/trust") {
			writeJSON(w, http.StatusForbidden, api.Error{Error: "client certificate is not trusted", Code: http.StatusForbidden})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// localOnly keeps an endpoint to the host's own administrator (the unix socket).
func (s *Server) localOnly(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			writeJSON(w, http.StatusForbidden, api.Error{Error: "only the local administrator may do this", Code: http.StatusForbidden})
			return
		}
		h(w, r)
	}
}

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req api.TrustTokensPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := instance.ValidateName(req.Name); err != nil {
		writeError(w, errdefs.Invalid("client name: %v", err))
		return
	}
	secret, hash := trust.NewSecret()
	expires := time.Now().Add(tokenLifetime).UTC()
	if err := s.Trust.Store.PutToken(&store.Token{ID: uuid.NewString(), SecretHash: hash, Name: req.Name, ExpiresAt: expires}); err != nil {
		writeError(w, err)
		return
	}
	tok := trust.JoinToken{Secret: secret, Fingerprint: trust.Fingerprint(s.Trust.Cert.Certificate[0]), Addresses: s.Trust.Addresses}
	writeJSON(w, http.StatusCreated, api.TrustToken{Token: tok.Encode(), ExpiresAt: expires})
}

// joinWithToken trusts the TLS client's certificate if it brings a valid, unused token.
func (s *Server) joinWithToken(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		writeError(w, errdefs.Invalid("a join must come over TLS with a client certificate"))
		return
	}
	var req api.TrustPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if req.Secret == "" {
		writeError(w, errdefs.Invalid("no token secret given"))
		return
	}
	tok, err := s.Trust.Store.TakeToken(trust.HashSecret(req.Secret), time.Now())
	if err != nil {
		writeJSON(w, http.StatusForbidden, api.Error{Error: err.Error(), Code: http.StatusForbidden})
		return
	}
	if err := s.Trust.Trusted.AddNamed(r.TLS.PeerCertificates[0].Raw, tok.Name); err != nil {
		writeError(w, err)
		return
	}
	s.Events.Publish(api.EventLifecycle, api.LifecycleEvent{Action: "certificate-trusted", Source: "/1.0/trust/" + tok.Name})
	writeJSON(w, http.StatusCreated, map[string]string{})
}

func (s *Server) listTrusted(w http.ResponseWriter, r *http.Request) {
	entries, err := s.Trust.Trusted.List()
	if err != nil {
		writeError(w, err)
		return
	}
	out := []api.TrustedCertificate{}
	for _, e := range entries {
		out = append(out, api.TrustedCertificate{Fingerprint: e.Fingerprint, Name: e.Name})
	}
	writeJSON(w, http.StatusOK, out)
}

// revokeTrust removes a certificate and cuts every connection it has open. It is local-only: a
// trusted peer must not be able to lock another one out.
func (s *Server) revokeTrust(w http.ResponseWriter, r *http.Request) {
	e, err := s.Trust.Trusted.Remove(r.PathValue("fingerprint"))
	if err != nil {
		writeError(w, errdefs.NotFound("%v", err))
		return
	}
	if n := s.peers.cut(e.Fingerprint); n > 0 {
		slog.Info("trust: revoked certificate's connections cut", "name", e.Name, "fingerprint", e.Fingerprint, "connections and requests", n)
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

func (s *Server) listRemotes(w http.ResponseWriter, r *http.Request) {
	remotes, err := s.Trust.Store.ListRemotes()
	if err != nil {
		writeError(w, err)
		return
	}
	out := []api.Remote{}
	for _, rm := range remotes {
		out = append(out, api.Remote{Name: rm.Name, URL: rm.URL, Fingerprint: rm.Fingerprint, AddedAt: rm.AddedAt})
	}
	writeJSON(w, http.StatusOK, out)
}

// addRemote joins another host with the token it issued: the host is reached at the URL, its
// certificate must match the token's fingerprint, and our certificate is what it then trusts.
func (s *Server) addRemote(w http.ResponseWriter, r *http.Request) {
	var req api.RemotesPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := instance.ValidateName(req.Name); err != nil {
		writeError(w, errdefs.Invalid("remote name: %v", err))
		return
	}
	if _, err := s.Trust.Store.GetRemote(req.Name); err == nil {
		writeError(w, errdefs.Exists("remote %q already exists", req.Name))
		return
	}
	tok, err := trust.DecodeToken(req.Token)
	if err != nil {
		writeError(w, errdefs.Invalid("%v", err))
		return
	}
	if req.URL == "" && len(tok.Addresses) > 0 {
		req.URL = "https://" + tok.Addresses[0]
	}
	if u, err := url.Parse(req.URL); err != nil || u.Scheme != "https" || u.Host == "" {
		writeError(w, errdefs.Invalid("remote URL %q: want https://HOST:PORT", req.URL))
		return
	}
	if tok.Fingerprint == trust.Fingerprint(s.Trust.Cert.Certificate[0]) {
		writeError(w, errdefs.Invalid("that token was issued by this host"))
		return
	}
	c, err := client.NewHTTPS(req.URL, trust.PinnedClientConfig(s.Trust.Cert, tok.Fingerprint))
	if err != nil {
		writeError(w, errdefs.Invalid("%v", err))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := c.JoinTrust(ctx, tok.Secret); err != nil {
		writeError(w, errdefs.Unavailable("join %s: %v", req.URL, err))
		return
	}
	rm := &store.Remote{Name: req.Name, URL: req.URL, Fingerprint: tok.Fingerprint, AddedAt: time.Now().UTC()}
	if err := s.Trust.Store.PutRemote(rm); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.Remote{Name: rm.Name, URL: rm.URL, Fingerprint: rm.Fingerprint, AddedAt: rm.AddedAt})
}

func (s *Server) deleteRemote(w http.ResponseWriter, r *http.Request) {
	if err := s.Trust.Store.DeleteRemote(r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}
