package network

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"tandem/internal/errdefs"
)

// Uplinks: a network whose bridge enslaves an existing host interface (a NIC cabled to a lab
// switch, or a veth into a host bridge), like Incus's bridge.external_interfaces. Hosts that each
// have the network (same name, same subnet, each with its uplink) share one L2 segment, so an
// instance keeps its MAC and address when it moves between them.
//
// Every host has the same gateway address and, the bridge MAC deriving from the name, the same
// gateway MAC: an anycast gateway. Each host answers for it to its own instances only, so an
// instance moved to another host finds its gateway (and its ARP entry for it) unchanged, and
// routing, NAT, DNS and DHCP happen on the host it runs on. The uplink's nft chain keeps the
// gateways apart: it drops what another host's gateway sends (its MAC is ours), ARP for or from
// the gateway address, and DHCP (each dnsmasq serves only its own instances' MACs and ignores
// the rest; nor may a DHCP server elsewhere on the segment address tandem's instances); the host's
// own frames never leave by the uplink. Instance ports keep their anti-spoofing chains; what comes in
// by the uplink is not judged by them (each host filters its own instances). So instances reach each other and
// on-link machines across hosts, but a host reaches only its own instances, and the gateway
// address is not reachable from the segment. tandem does not keep addresses apart across hosts:
// give instances on different hosts different addresses (ipv4.address), or move them.

// validateUplink checks what Create can check of an uplink without looking at the host.
func validateUplink(cfg Config) error {
	if cfg.Uplink == "" {
		return nil
	}
	if !ifNameRE.MatchString(cfg.Uplink) {
		return errdefs.Invalid("uplink %q is not a valid Linux interface name", cfg.Uplink)
	}
	if cfg.Uplink == cfg.Name {
		return errdefs.Invalid("uplink %q is the network's own bridge", cfg.Uplink)
	}
	if cfg.Subnet == "" {
		return errdefs.Invalid("a network with an uplink needs an explicit subnet, the same on every host sharing the segment")
	}
	return nil
}

// checkUplink makes sure name can become an uplink: it exists, is an Ethernet interface nothing
// else holds, and carries no address (enslaving it would take that address off the network, as
// Incus refuses too). Called with m.mu held, before Create changes anything.
func (m *Manager) checkUplink(ctx context.Context, name string) error {
	for _, s := range m.nets {
		if s.Uplink == name {
			return errdefs.Conflict("interface %q is already the uplink of network %q", name, s.Name)
		}
		if s.Name == name {
			return errdefs.Invalid("uplink %q is the bridge of network %q", name, s.Name)
		}
	}
	l, err := getLink(ctx, name)
	if err != nil {
		return err
	}
	switch {
	case l == nil:
		return errdefs.Invalid("uplink %q: no such interface on this host", name)
	case l.Type == "loopback":
		return errdefs.Invalid("uplink %q is a loopback interface", name)
	case l.LinkInfo.Kind == "bridge":
		return errdefs.Invalid("uplink %q is a bridge, and a bridge cannot be enslaved to another; connect the two with a veth pair and give one end", name)
	case l.Type != "ether":
		return errdefs.Invalid("uplink %q is not an Ethernet interface (link type %q)", name, l.Type)
	case l.Master != "":
		return errdefs.Conflict("uplink %q is already enslaved to %q", name, l.Master)
	}
	addrs, err := globalAddrs(ctx, name)
	if err != nil {
		return err
	}
	if len(addrs) > 0 {
		return errdefs.Conflict("uplink %q has addresses (%s): only an unconfigured interface can be an uplink", name, strings.Join(addrs, ", "))
	}
	return nil
}

// globalAddrs lists an interface's IPv4 addresses and IPv6 ones beyond link-local.
func globalAddrs(ctx context.Context, name string) ([]string, error) {
	out, err := run(ctx, "", "ip", "-j", "addr", "show", "dev", name)
	if err != nil {
		return nil, err
	}
	var links []struct {
		Addrs []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
			Scope     string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("ip addr show %s: %v", name, err)
	}
	var addrs []string
	for _, l := range links {
		for _, a := range l.Addrs {
			if a.Family == "inet" || a.Scope != "link" {
				addrs = append(addrs, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
			}
		}
	}
	return addrs, nil
}

// ensureUplink enslaves the network's uplink to its bridge and brings it up; one already there is
// kept. It is called after the nft rules are in place, so the uplink never forwards unfiltered.
func ensureUplink(ctx context.Context, s *state) error {
	if s.Uplink == "" {
		return nil
	}
	l, err := getLink(ctx, s.Uplink)
	if err != nil {
		return err
	}
	if l == nil {
		return errdefs.NotFound("uplink %q of network %q: no such interface on this host", s.Uplink, s.Name)
	}
	if l.Master != "" && l.Master != s.Name {
		return errdefs.Conflict("uplink %q of network %q is enslaved to %q", s.Uplink, s.Name, l.Master)
	}
	if _, err := run(ctx, "", "ip", "link", "set", "dev", s.Uplink, "master", s.Name, "up"); err != nil {
		return fmt.Errorf("attach uplink %s to bridge %s: %w", s.Uplink, s.Name, err)
	}
	return nil
}

// releaseUplink takes the uplink off the bridge (if it is on ours) and leaves it up: it is the
// operator's interface, and may carry other traffic once free.
func releaseUplink(ctx context.Context, s *state) error {
	if s.Uplink == "" {
		return nil
	}
	l, err := getLink(ctx, s.Uplink)
	if err != nil || l == nil || l.Master != s.Name {
		return err
	}
	if _, err := run(ctx, "", "ip", "link", "set", "dev", s.Uplink, "nomaster"); err != nil {
		return fmt.Errorf("release uplink %s: %w", s.Uplink, err)
	}
	return nil
}
