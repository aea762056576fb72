package network

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"

	"tandem/internal/errdefs"
)

// Lease is a NIC's place on a network: what the instance is told by DHCP, and what a driver needs
// to build the NIC (the MAC) or configure it statically.
type Lease struct {
	Network  string     `json:"network"`
	Instance string     `json:"instance"`
	NIC      string     `json:"nic"`
	MAC      string     `json:"mac"`
	IPv4     netip.Addr `json:"ipv4"`
	Gateway  netip.Addr `json:"gateway"`
	Prefix   int        `json:"prefix"` // subnet prefix length
	DNS      netip.Addr `json:"dns"`
	Domain   string     `json:"domain"`
	Ingress  string     `json:"ingress,omitempty"`
	Egress   string     `json:"egress,omitempty"`
	HostIf   string     `json:"host_if,omitempty"` // host-side veth or tap while plugged
}

// CIDR is the NIC's address with the subnet's prefix length, e.g. 10.1.2.5/24.
func (l Lease) CIDR() string { return netip.PrefixFrom(l.IPv4, l.Prefix).String() }

// AttachOptions are a nic device's settings (hwaddr, ipv4.address, limits.ingress, limits.egress).
type AttachOptions struct {
	MAC     string // empty: keep the NIC's MAC, or generate a stable one
	IPv4    string // empty: keep the NIC's address, or allocate one
	Ingress string // rate into the instance, e.g. "10Mbit"; empty: none
	Egress  string // rate out of the instance
}

var nicNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

func (s *state) lease(a *attachment) Lease {
	return Lease{
		Network: s.Name, Instance: a.Instance, NIC: a.NIC, MAC: a.MAC, IPv4: a.IPv4,
		Gateway: s.gateway(), Prefix: s.Subnet.Bits(), DNS: s.gateway(), Domain: s.DNSDomain,
		Ingress: a.Ingress, Egress: a.Egress, HostIf: a.HostIf,
	}
}

func checkInstanceNIC(instance, nic string) error {
	if !nameRE.MatchString(instance) {
		return errdefs.Invalid("instance name %q is not valid", instance)
	}
	if !nicNameRE.MatchString(nic) {
		return errdefs.Invalid("NIC name %q is not valid", nic)
	}
	return nil
}

// Attach gives instance's NIC an address and MAC on a network, or returns the ones it has: calling
// it again for the same instance and NIC is harmless and keeps both (across restarts, and across a
// migration when the MAC and address are passed along). Calling it with other limits updates them,
// live if the NIC is plugged. instance is the instance's name: it is the NIC's DNS name.
func (m *Manager) Attach(ctx context.Context, network, instance, nic string, opts AttachOptions) (Lease, error) {
	if err := checkInstanceNIC(instance, nic); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.nets[network]
	if !ok {
		return Lease{}, errdefs.NotFound("network %q not found", network)
	}
	key := attachKey(instance, nic)
	old := s.Attachments[key]
	ns := s.clone()
	a, err := ns.allocate(instance, nic, opts)
	if err != nil {
		return Lease{}, err
	}
	if old != nil && *old == *a {
		return s.lease(old), nil
	}
	if old != nil && old.HostIf != "" && (old.MAC != a.MAC || old.IPv4 != a.IPv4) {
		return Lease{}, errdefs.Conflict("NIC %s of %s is plugged into network %q: unplug it before changing its MAC or address", nic, instance, network)
	}
	if err := m.commit(ctx, s, ns); err != nil {
		return Lease{}, err
	}
	if old != nil && (old.MAC != a.MAC || old.IPv4 != a.IPv4) {
		m.forgetLeaseOrWarn(ctx, ns, old)
	}
	if old != nil && a.HostIf != "" && (old.Ingress != a.Ingress || old.Egress != a.Egress) {
		if err := m.applyLimits(ctx, a.HostIf, a.Ingress, a.Egress); err != nil {
			return Lease{}, err
		}
	}
	return ns.lease(a), nil
}

// Detach releases instance's NIC on a network, unplugging it first if needed. Detaching a NIC that
// is not attached is not an error.
func (m *Manager) Detach(ctx context.Context, network, instance, nic string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.nets[network]
	if !ok {
		return errdefs.NotFound("network %q not found", network)
	}
	a := s.Attachments[attachKey(instance, nic)]
	if a == nil {
		return nil
	}
	if err := m.unplugLocked(ctx, network, a); err != nil {
		return err
	}
	s = m.nets[network]
	ns := s.clone()
	ns.release(instance, nic)
	if err := m.commit(ctx, s, ns); err != nil {
		return err
	}
	m.forgetLeaseOrWarn(ctx, ns, a)
	return nil
}

// forgetLeaseOrWarn drops dnsmasq's lease of a pair a NIC gave up; a failure only costs that
// address for the rest of the lease time, so it is logged, not returned.
func (m *Manager) forgetLeaseOrWarn(ctx context.Context, s *state, gone *attachment) {
	if err := m.forgetLease(ctx, s, gone.MAC, gone.IPv4); err != nil {
		slog.Warn("network: cannot release DHCP lease", "network", s.Name, "mac", gone.MAC, "ip", gone.IPv4, "err", err)
	}
}

// Lease returns what instance's NIC holds on a network.
func (m *Manager) Lease(ctx context.Context, network, instance, nic string) (Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, a, err := m.lookup(network, instance, nic)
	if err != nil {
		return Lease{}, err
	}
	return s.lease(a), nil
}

func (m *Manager) lookup(network, instance, nic string) (*state, *attachment, error) {
	s, ok := m.nets[network]
	if !ok {
		return nil, nil, errdefs.NotFound("network %q not found", network)
	}
	a := s.Attachments[attachKey(instance, nic)]
	if a == nil {
		return nil, nil, errdefs.NotFound("NIC %s of %s is not attached to network %q", nic, instance, network)
	}
	return s, a, nil
}

// commit persists a changed state, then brings nft rules and dnsmasq's hosts in line with it. The
// record is written first: if applying fails, Recover (or the next change) applies it again.
func (m *Manager) commit(ctx context.Context, old, ns *state) error {
	if err := saveState(m.netDir(ns.Name), ns); err != nil {
		return err
	}
	m.nets[ns.Name] = ns
	if portsChanged(old, ns) {
		if err := applyNft(ctx, nftRuleset(ns)); err != nil {
			return err
		}
	}
	f := m.files(ns.Name)
	changed, err := writeHostFiles(ns, f)
	if err != nil {
		return fmt.Errorf("network %q: %w", ns.Name, err)
	}
	if changed {
		return reloadDnsmasq(f)
	}
	return nil
}

// portsChanged says whether the nft rules, which cover plugged NICs only, need rewriting.
func portsChanged(a, b *state) bool { return nftRuleset(a) != nftRuleset(b) }

// DeviceNetwork is the network a nic device is on: its "network" key, or the default network.
func DeviceNetwork(dev map[string]string) string {
	if n := dev["network"]; n != "" {
		return n
	}
	return DefaultName
}
