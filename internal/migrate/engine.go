// Package migrate moves instances between hosts: `tandem move` (cold or live) and `tandem copy`.
// The source daemon drives every step; the destination daemon answers under /1.0/migrations,
// reachable only by trusted hosts over mutual TLS. All data (QEMU's streams, rsync) goes through
// tunnels on that same channel (tunnel.go). The drivers hold the mechanics (see
// internal/driver/container/MIGRATION.md and internal/driver/vm/outgoing.go); this package holds
// the sequence, the transfers and the failure rules:
//
//   - Until the destination says it runs the instance, the source keeps everything, and any
//     failure resumes it there.
//   - The destination runs a restored instance only until the source commits; without a commit
//     within CommitTimeout (a cut link, a dead source) it drops it. A source that lost the answer
//     to its restore call waits that long before it resumes, so there are never two copies.
//   - A lazy (post-copy) container move commits only once the destination has every page
//     (pages.go); until then it counts as not running there, and a failure drops it there.
//   - Both keep the state of a migration in their records, so a daemon that dies mid-way settles
//     it at its next start (recover.go).
package migrate

import (
	"crypto/tls"
	"sync"
	"time"

	"tandem/client"
	"tandem/internal/errdefs"
	"tandem/internal/image"
	"tandem/internal/instance"
	"tandem/internal/store"
	"tandem/internal/trust"
)

// Timeouts of the failure rules. Variables so that tests can shorten them.
var (
	// CommitTimeout: a destination drops a restored instance the source has not committed by then.
	CommitTimeout = 15 * time.Second
	// IdleTimeout: a destination drops a migration it has heard nothing of for this long.
	IdleTimeout = 45 * time.Second
	// RestoreTimeout bounds the destination's restore or resume.
	RestoreTimeout = 60 * time.Second
	// StallTimeout: a source gives a move up when no byte has crossed the link for this long
	// during a transfer (a cut link would otherwise hang until TCP gives up, many minutes).
	StallTimeout = 15 * time.Second
)

// Config wires an engine.
type Config struct {
	Instances *instance.Manager
	Images    *image.Store // nil: images are not transferred (the fake driver's tests)
	Store     *store.Store
	Cert      tls.Certificate
	Dir       string // state: dump directories
	RunDir    string // short: unix sockets
}

// Engine is one host's migration engine, source and destination alike.
type Engine struct {
	Config
	mu       sync.Mutex
	incoming map[string]*incoming
	finished map[string]finished // recently ended incoming migrations, for late status queries
}

type finished struct {
	status string
	err    string
	at     time.Time
}

// New returns an engine; call Instances.SetMigrationRecovery(engine) before the instances recover.
func New(cfg Config) *Engine {
	return &Engine{Config: cfg, incoming: map[string]*incoming{}, finished: map[string]finished{}}
}

// remote returns a client for a named remote, and refuses this host itself.
func (e *Engine) remote(name string) (*client.Client, error) {
	rm, err := e.Store.GetRemote(name)
	if err != nil {
		return nil, errdefs.NotFound("unknown remote %q (tandem remote add)", name)
	}
	if len(e.Cert.Certificate) > 0 && rm.Fingerprint == trust.Fingerprint(e.Cert.Certificate[0]) {
		return nil, errdefs.Invalid("remote %q is this host: an instance cannot move to where it is", name)
	}
	return client.NewHTTPS(rm.URL, trust.PinnedClientConfig(e.Cert, rm.Fingerprint))
}
