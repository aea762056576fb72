// Package network manages tandem's networks: a Linux bridge per network with the gateway address,
// tandem's own nftables tables (NAT out, anti-spoofing per NIC), a dnsmasq per network handing out
// static DHCP leases and resolving instance names, IPAM persisted per network, and the host-side
// pieces of NICs (veth pairs into container netns, taps for QEMU) with rate limits.
//
// Everything is driven by shelling out to ip, nft, tc and dnsmasq, in the network namespace the
// daemon runs in. dnsmasq runs in its own session and outlives the daemon; Recover re-attaches.
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"tandem/internal/errdefs"
)

const (
	// DefaultName is the network EnsureDefault creates; it is also its bridge's name.
	DefaultName = "tandem0"
	// DefaultDomain is the DNS domain instance names resolve in when none is given.
	DefaultDomain = "tandem"
	// DefaultPrefix starts the names of host-side NIC interfaces.
	DefaultPrefix = "tdm"
)

// Options configure a Manager.
type Options struct {
	Dir    string // <daemon dir>/networks: state, dnsmasq configs and leases
	RunDir string // dnsmasq pidfiles
	// Prefix starts host-side veth and tap names (default "tdm", at most 8 of a-z0-9). Daemons in
	// different network namespaces may share it.
	Prefix string
	// DnsmasqUser is the user dnsmasq drops to (default "root"). It must be able to read Dir on
	// every SIGHUP, which a 0700 daemon dir does not allow to anyone else.
	DnsmasqUser string
	// TapUser, if set, owns the taps made for VMs, so that a QEMU running as that user can open them.
	TapUser string
}

// Config is what an operator gives to create a network.
type Config struct {
	Name      string
	Subnet    string // e.g. 10.1.2.0/24; empty picks a free 10.x.y.0/24
	NAT       *bool  // masquerade traffic leaving the subnet; nil means true
	DNSDomain string // empty means "tandem"
	// Uplink is an existing host interface to enslave to the bridge (see uplink.go); it needs an
	// explicit Subnet, the same on every host sharing the segment.
	Uplink string
	// HostAccess lets instances reach every service of the host, not only DHCP, DNS and ICMP.
	HostAccess bool
}

// Network describes a managed network.
type Network struct {
	Name       string    `json:"name"`
	Bridge     string    `json:"bridge"`
	Subnet     string    `json:"subnet"`
	Gateway    string    `json:"gateway"`
	NAT        bool      `json:"nat"`
	DNSDomain  string    `json:"dns_domain"`
	Uplink     string    `json:"uplink,omitempty"`
	HostAccess bool      `json:"host_access"`
	CreatedAt  time.Time `json:"created_at"`
	Leases     []Lease   `json:"leases"`
}

// Manager owns the networks of one daemon. One mutex serializes every change: they are short, and
// bridge, nft and dnsmasq state must move together.
type Manager struct {
	opts Options
	intn func(int) int
	// lock tells other daemons this one lives and owns its bridges (adopt.go); nil if another
	// Manager of this process holds it.
	lock *os.File

	mu   sync.Mutex
	nets map[string]*state
}

var prefixRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// NewManager loads the networks recorded under opts.Dir. It changes nothing on the host: call
// Recover to bring the networks up.
func NewManager(opts Options) (*Manager, error) {
	if opts.Dir == "" || opts.RunDir == "" {
		return nil, errors.New("network: Dir and RunDir are required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(opts.Prefix) {
		return nil, fmt.Errorf("network: interface prefix %q: want 1-8 of a-z0-9, starting with a letter", opts.Prefix)
	}
	if opts.DnsmasqUser == "" {
		opts.DnsmasqUser = "root"
	}
	for _, d := range []string{opts.Dir, opts.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
	}
	nets, leftovers, err := loadAll(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	for _, dir := range leftovers {
		slog.Warn("network: removing leftover of an interrupted create", "dir", dir)
		os.RemoveAll(dir)
	}
	return &Manager{opts: opts, intn: rand.IntN, nets: nets, lock: takeOwnerLock(opts.Dir)}, nil
}

func (m *Manager) netDir(name string) string { return filepath.Join(m.opts.Dir, name) }

func (m *Manager) files(name string) dnsmasqFiles {
	return newDnsmasqFiles(m.netDir(name), m.opts.RunDir, name)
}

func (m *Manager) describe(s *state) Network {
	n := Network{
		Name: s.Name, Bridge: s.Name, Subnet: s.Subnet.String(), Gateway: s.gateway().String(),
		NAT: s.NAT, DNSDomain: s.DNSDomain, Uplink: s.Uplink, HostAccess: s.HostAccess, CreatedAt: s.CreatedAt, Leases: []Lease{},
	}
	for _, a := range s.sortedAttachments() {
		n.Leases = append(n.Leases, s.lease(a))
	}
	return n
}

// List returns every network, by name.
func (m *Manager) List(ctx context.Context) []Network {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Network, 0, len(m.nets))
	for _, s := range m.nets {
		out = append(out, m.describe(s))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns one network.
func (m *Manager) Get(ctx context.Context, name string) (Network, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.nets[name]
	if !ok {
		return Network{}, errdefs.NotFound("network %q not found", name)
	}
	return m.describe(s), nil
}

// Create makes a network: state record first (so a crash leaves something Recover finishes or Delete
// removes), then bridge, rules and dnsmasq. A failure undoes everything it did.
func (m *Manager) Create(ctx context.Context, cfg Config) (Network, error) {
	return m.create(ctx, cfg, false)
}

// create is Create; adopting takes over an existing bridge of that name (adopt.go).
func (m *Manager) create(ctx context.Context, cfg Config, adopting bool) (Network, error) {
	if err := ValidateName(cfg.Name); err != nil {
		return Network{}, err
	}
	domain := cfg.DNSDomain
	if domain == "" {
		domain = DefaultDomain
	}
	if err := validateDomain(domain); err != nil {
		return Network{}, err
	}
	if err := validateUplink(cfg); err != nil {
		return Network{}, err
	}
	var subnet netip.Prefix
	if cfg.Subnet != "" {
		var err error
		if subnet, err = ParseSubnet(cfg.Subnet); err != nil {
			return Network{}, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.nets[cfg.Name]; ok {
		return Network{}, errdefs.Exists("network %q already exists", cfg.Name)
	}
	if l, err := getLink(ctx, cfg.Name); err != nil {
		return Network{}, err
	} else if l != nil && !adopting {
		return Network{}, errdefs.Exists("an interface named %q already exists on this host; choose another network name", cfg.Name)
	}
	if cfg.Uplink != "" {
		if err := m.checkUplink(ctx, cfg.Uplink); err != nil {
			return Network{}, err
		}
	}
	others := map[string]netip.Prefix{}
	for n, s := range m.nets {
		others[n] = s.Subnet
	}
	routes, err := m.foreignRoutes(ctx, cfg.Name)
	if err != nil {
		return Network{}, err
	}
	if subnet.IsValid() {
		if why := subnetConflict(subnet, others, routes); why != "" {
			return Network{}, errdefs.Invalid("%s", why)
		}
	} else if subnet, err = pickSubnet(others, routes, m.intn); err != nil {
		return Network{}, err
	}

	s := &state{
		Name: cfg.Name, Subnet: subnet, NAT: cfg.NAT == nil || *cfg.NAT, DNSDomain: domain, Uplink: cfg.Uplink,
		HostAccess: cfg.HostAccess,
		BridgeMAC:  stableMAC("bridge/"+cfg.Name, 0), CreatedAt: time.Now().UTC(),
		Attachments: map[string]*attachment{},
	}
	dir := m.netDir(s.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Network{}, err
	}
	if err := saveState(dir, s); err != nil {
		os.RemoveAll(dir)
		return Network{}, err
	}
	if err := m.up(ctx, s, false); err != nil {
		if derr := m.down(context.WithoutCancel(ctx), s); derr != nil {
			slog.Warn("network: cleanup after failed create", "network", s.Name, "err", derr)
		}
		os.RemoveAll(dir)
		return Network{}, fmt.Errorf("create network %q: %w", s.Name, err)
	}
	m.nets[s.Name] = s
	slog.Info("network: created", "network", s.Name, "subnet", s.Subnet, "nat", s.NAT, "uplink", s.Uplink)
	return m.describe(s), nil
}

// foreignRoutes are the host's routes except those through tandem's own bridges (those networks
// are checked by name, with a clearer message) and the one being made (an adopted bridge's).
func (m *Manager) foreignRoutes(ctx context.Context, making string) ([]hostRoute, error) {
	all, err := hostRoutes(ctx)
	if err != nil {
		return nil, err
	}
	var out []hostRoute
	for _, r := range all {
		if _, ours := m.nets[r.Dev]; !ours && r.Dev != making {
			out = append(out, r)
		}
	}
	return out, nil
}

// EnsureDefault creates the default network unless it exists. A bridge of that name that this
// Manager has no record of is adopted if no live daemon owns it; if one does, the error says which.
func (m *Manager) EnsureDefault(ctx context.Context) (Network, error) {
	if n, err := m.Get(ctx, DefaultName); err == nil {
		return n, nil
	}
	n, err := m.Create(ctx, Config{Name: DefaultName})
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		if n, gerr := m.Get(ctx, DefaultName); gerr == nil {
			return n, nil
		}
		return m.adopt(ctx, DefaultName)
	}
	return n, err
}

// Delete removes a network and everything it made: dnsmasq, nft tables, bridge, files. It is
// refused while any NIC holds an address on it.
func (m *Manager) Delete(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.nets[name]
	if !ok {
		return errdefs.NotFound("network %q not found", name)
	}
	if users := s.users(); len(users) > 0 {
		shown := users
		if len(shown) > 5 {
			shown = append(shown[:5:5], fmt.Sprintf("and %d more", len(users)-5))
		}
		return errdefs.Conflict("network %q is in use by %s", name, strings.Join(shown, ", "))
	}
	// On failure the record stays, so Delete can be retried.
	if err := m.down(ctx, s); err != nil {
		return fmt.Errorf("delete network %q: %w", name, err)
	}
	if err := os.RemoveAll(m.netDir(name)); err != nil {
		return fmt.Errorf("delete network %q: %w", name, err)
	}
	delete(m.nets, name)
	slog.Info("network: deleted", "network", name)
	return nil
}

// Recover brings back every recorded network after a daemon restart or a reboot: bridge, address,
// forwarding, nft tables, uplink, dnsmasq. It is idempotent and leaves a running dnsmasq alone. An
// uplink that is missing or taken is logged, not an error: the network comes up host-local rather
// than keep the daemon from starting, and the next start enslaves it again.
func (m *Manager) Recover(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.nets))
	for n := range m.nets {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		if err := m.up(ctx, m.nets[n], true); err != nil {
			errs = append(errs, fmt.Errorf("recover network %q: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// up makes the host match a network's state; every step is idempotent. recovering tolerates a
// missing uplink (see Recover).
func (m *Manager) up(ctx context.Context, s *state, recovering bool) error {
	if err := enableForwarding(); err != nil {
		return err
	}
	if err := ensureBridge(ctx, s, m.opts.Dir); err != nil {
		return err
	}
	if err := applyNft(ctx, nftRuleset(s)); err != nil {
		return err
	}
	if err := ensureUplink(ctx, s); err != nil {
		if !recovering {
			return err
		}
		slog.Warn("network: uplink not attached; the network is host-local until the next start", "network", s.Name, "err", err)
	}
	return m.ensureDnsmasq(ctx, s)
}

// down removes what up made; absent pieces are fine. It keeps going on errors to remove the rest.
// The uplink is released before the bridge goes, and stays up.
func (m *Manager) down(ctx context.Context, s *state) error {
	return errors.Join(
		stopDnsmasq(ctx, m.files(s.Name)),
		releaseUplink(ctx, s),
		applyNft(ctx, nftRemoval(s.Name)),
		deleteLink(ctx, s.Name),
	)
}

// ensureBridge creates the bridge if needed, marked as owned by the Manager of dir, and gives it
// the gateway address. A bridge another live daemon owns is refused.
func ensureBridge(ctx context.Context, s *state, dir string) error {
	l, err := getLink(ctx, s.Name)
	if err != nil {
		return err
	}
	if l == nil {
		// forward_delay 0: STP is off, so a new port forwards at once.
		if _, err := run(ctx, "", "ip", "link", "add", "name", s.Name, "address", s.BridgeMAC,
			"type", "bridge", "forward_delay", "0"); err != nil {
			return fmt.Errorf("create bridge: %w", err)
		}
	} else if l.LinkInfo.Kind != "bridge" {
		return errdefs.Conflict("interface %q exists and is a %q, not a bridge", s.Name, l.LinkInfo.Kind)
	} else if err := checkBridgeOwner(l, dir); err != nil {
		return err
	}
	if l == nil || l.Alias != ownerMark+dir {
		if err := markBridge(ctx, s.Name, dir); err != nil {
			return err
		}
	}
	addr := fmt.Sprintf("%s/%d", s.gateway(), s.Subnet.Bits())
	if _, err := run(ctx, "", "ip", "addr", "replace", addr, "dev", s.Name); err != nil {
		return fmt.Errorf("bridge address: %w", err)
	}
	if _, err := run(ctx, "", "ip", "link", "set", "dev", s.Name, "up"); err != nil {
		return fmt.Errorf("bridge up: %w", err)
	}
	return nil
}

// ensureDnsmasq writes the network's dnsmasq files and starts dnsmasq unless it runs; a running one
// is restarted only if its config changed, and told to reread hosts if they did.
func (m *Manager) ensureDnsmasq(ctx context.Context, s *state) error {
	f := m.files(s.Name)
	confChanged, err := writeIfChanged(f.Conf, dnsmasqConfig(s, f, m.opts.DnsmasqUser))
	if err != nil {
		return err
	}
	hostsChanged, err := writeHostFiles(s, f)
	if err != nil {
		return err
	}
	running := dnsmasqPID(f) > 0
	if running && confChanged {
		if err := stopDnsmasq(ctx, f); err != nil {
			return err
		}
		running = false
	}
	if !running {
		// Leases of pairs no NIC has any more would keep those addresses from their new owners.
		if err := pruneLeases(f.Leases, leaseKeeper(s)); err != nil {
			return err
		}
		return startDnsmasq(ctx, f)
	}
	if hostsChanged {
		return reloadDnsmasq(f)
	}
	return nil
}
