package network

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"tandem/internal/errdefs"
)

// macPrefix is the OUI tandem's generated MACs use (the one Xen, LXD and Incus use too).
const macPrefix = "00:16:3e"

// stableMAC derives a MAC from a seed, so the same instance and NIC get the same MAC every time.
// try varies it when the first choice is taken.
func stableMAC(seed string, try int) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", seed, try))
	return fmt.Sprintf("%s:%02x:%02x:%02x", macPrefix, sum[0], sum[1], sum[2])
}

// normalizeMAC checks a MAC given by an operator and returns it in lower case. Multicast and zero
// addresses cannot be a NIC's own.
func normalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(strings.TrimSpace(s))
	if err != nil || len(hw) != 6 {
		return "", errdefs.Invalid("%q is not a MAC address like 00:16:3e:12:34:56", s)
	}
	if hw[0]&1 == 1 {
		return "", errdefs.Invalid("MAC %s is a multicast address", hw)
	}
	if hw.String() == "00:00:00:00:00:00" {
		return "", errdefs.Invalid("MAC %s is all zeros", hw)
	}
	return hw.String(), nil
}

// firstHost and lastHost bound the addresses instances may get: the gateway takes the first one.
func (s *state) firstHost() netip.Addr { return s.gateway().Next() }
func (s *state) lastHost() netip.Addr  { return s.broadcast().Prev() }

// checkRequestedIP parses an operator's static address and checks it fits the subnet.
func (s *state) checkRequestedIP(v string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(strings.TrimSpace(v))
	if err != nil || !ip.Is4() {
		return netip.Addr{}, errdefs.Invalid("ipv4.address %q is not an IPv4 address", v)
	}
	switch {
	case !s.Subnet.Contains(ip):
		return netip.Addr{}, errdefs.Invalid("ipv4.address %s is outside the subnet %s of network %q", ip, s.Subnet, s.Name)
	case ip == s.Subnet.Addr():
		return netip.Addr{}, errdefs.Invalid("ipv4.address %s is the network address of %s", ip, s.Subnet)
	case ip == s.gateway():
		return netip.Addr{}, errdefs.Invalid("ipv4.address %s is the gateway of network %q", ip, s.Name)
	case ip == s.broadcast():
		return netip.Addr{}, errdefs.Invalid("ipv4.address %s is the broadcast address of %s", ip, s.Subnet)
	}
	return ip, nil
}

// allocate creates or updates the attachment of instance/nic. It is idempotent: an existing
// attachment keeps its MAC and address unless the request names different ones.
func (s *state) allocate(instance, nic string, opts AttachOptions) (*attachment, error) {
	key := attachKey(instance, nic)
	usedIP := map[netip.Addr]string{}
	usedMAC := map[string]string{s.BridgeMAC: "the bridge of network " + s.Name}
	for k, a := range s.Attachments {
		if k != key {
			usedIP[a.IPv4] = k
			usedMAC[a.MAC] = k
		}
	}
	for _, r := range []string{opts.Ingress, opts.Egress} {
		if _, err := ParseRate(r); err != nil {
			return nil, err
		}
	}
	a := &attachment{Instance: instance, NIC: nic}
	if old := s.Attachments[key]; old != nil {
		*a = *old
	}
	a.Ingress, a.Egress = strings.TrimSpace(opts.Ingress), strings.TrimSpace(opts.Egress)

	if opts.MAC != "" {
		mac, err := normalizeMAC(opts.MAC)
		if err != nil {
			return nil, err
		}
		if who, taken := usedMAC[mac]; taken {
			return nil, errdefs.Conflict("MAC %s is already used by %s on network %q", mac, who, s.Name)
		}
		a.MAC = mac
	}
	for try := 0; a.MAC == ""; try++ {
		if mac := stableMAC(key, try); usedMAC[mac] == "" {
			a.MAC = mac
		}
	}

	switch {
	case opts.IPv4 != "":
		ip, err := s.checkRequestedIP(opts.IPv4)
		if err != nil {
			return nil, err
		}
		if who, taken := usedIP[ip]; taken {
			return nil, errdefs.Conflict("ipv4.address %s is already used by %s on network %q", ip, who, s.Name)
		}
		a.IPv4, a.Static = ip, true
	case a.IPv4.IsValid():
		a.Static = false // keep the address the NIC has; it just is no longer pinned
	default:
		ip, err := s.nextFree(usedIP)
		if err != nil {
			return nil, err
		}
		a.IPv4 = ip
		s.Next = ip.Next()
	}
	s.Attachments[key] = a
	return a, nil
}

// nextFree finds a free address going round from s.Next.
func (s *state) nextFree(used map[netip.Addr]string) (netip.Addr, error) {
	first, last := s.firstHost(), s.lastHost()
	start := s.Next
	if !start.IsValid() || start.Less(first) || last.Less(start) {
		start = first
	}
	ip := start
	for {
		if _, taken := used[ip]; !taken {
			return ip, nil
		}
		if ip = ip.Next(); last.Less(ip) {
			ip = first
		}
		if ip == start {
			return netip.Addr{}, errdefs.Conflict("network %q has no free address left in %s", s.Name, s.Subnet)
		}
	}
}

// release forgets instance/nic; it reports whether there was anything to forget.
func (s *state) release(instance, nic string) bool {
	key := attachKey(instance, nic)
	if _, ok := s.Attachments[key]; !ok {
		return false
	}
	delete(s.Attachments, key)
	return true
}

// users lists who holds addresses on the network, for a refused Delete.
func (s *state) users() []string {
	var out []string
	for _, a := range s.sortedAttachments() {
		out = append(out, attachKey(a.Instance, a.NIC))
	}
	return out
}
