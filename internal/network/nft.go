package network

import (
	"context"
	"fmt"
	"strings"
)

// tableName is tandem's own nftables table for one network, in both the bridge family
// (anti-spoofing) and the ip family (NAT). tandem never touches a table it did not name.
func tableName(network string) string { return "tandem-" + network }

// portChain is the per-NIC chain of the anti-spoofing rules.
func portChain(hostIf string) string { return "port-" + hostIf }

// nftRuleset renders a network's complete nftables configuration. It is applied with one `nft -f -`,
// which is a single transaction: the "add, delete, define" idiom replaces the tables atomically, so
// there is never a moment without rules and nothing of an earlier version survives.
//
// Anti-spoofing uses the bridge family: its prerouting hook sees every frame a port sends, bridged
// or bound for the host, and needs neither br_netfilter nor conntrack. A port may send only from its
// MAC: RARP (QEMU's announce), ARP only for its own IP (or 0.0.0.0 probes), IPv4 only from its IP
// (or a DHCP request from 0.0.0.0), no DHCP server replies, and nothing else: the network is
// IPv4-only, so IPv6 and VLAN-tagged frames, which could carry any address, are dropped. Only
// instance ports are filtered so: the uplink, if any, has its own chain (writeUplinkChains), which
// keeps the hosts' gateways apart.
func nftRuleset(s *state) string {
	t := tableName(s.Name)
	var b strings.Builder
	fmt.Fprintf(&b, "# tandem network %s: generated, replaced whole on every change\n", s.Name)
	fmt.Fprintf(&b, "table bridge %s\ndelete table bridge %s\ntable bridge %s {\n", t, t, t)
	b.WriteString("\tchain prerouting {\n\t\ttype filter hook prerouting priority filter; policy accept;\n")
	var ports []*attachment
	for _, a := range s.sortedAttachments() {
		if a.HostIf != "" {
			ports = append(ports, a)
		}
	}
	var jumps []string
	for _, a := range ports {
		jumps = append(jumps, fmt.Sprintf("%q : jump %s", a.HostIf, portChain(a.HostIf)))
	}
	if s.Uplink != "" {
		jumps = append(jumps, fmt.Sprintf("%q : jump %s", s.Uplink, uplinkChain))
	}
	if len(jumps) > 0 {
		fmt.Fprintf(&b, "\t\tiifname vmap { %s }\n", strings.Join(jumps, ", "))
	}
	b.WriteString("\t}\n")
	for _, a := range ports {
		writePortChain(&b, a)
	}
	if s.Uplink != "" {
		writeUplinkChains(&b, s)
	}
	b.WriteString("}\n")

	fmt.Fprintf(&b, "table ip %s\ndelete table ip %s\n", t, t)
	if s.NAT || !s.HostAccess {
		fmt.Fprintf(&b, "table ip %s {\n", t)
		if !s.HostAccess {
			writeInputChain(&b, s)
		}
		if s.NAT {
			b.WriteString("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
			fmt.Fprintf(&b, "\t\tip saddr %s ip daddr != { %s, 224.0.0.0/4, 255.255.255.255 } masquerade\n", s.Subnet, s.Subnet)
			b.WriteString("\t}\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// writeInputChain renders the host's input filter for what arrives from the bridge, to any of
// the host's addresses: instances get DHCP and DNS from the network's dnsmasq and ICMP (ping, path
// MTU), and answers to connections the host opened; anything else (the API, the join endpoint,
// SSH) is rejected at once, so a client sees "connection refused" rather than a timeout. Forwarded
// traffic (NAT to the outside, instance to instance) does not pass the input hook.
func writeInputChain(b *strings.Builder, s *state) {
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n")
	fmt.Fprintf(b, "\t\tiifname != %q return\n", s.Name)
	b.WriteString("\t\tct state established,related accept\n")
	b.WriteString("\t\tudp dport { 53, 67 } accept\n")
	b.WriteString("\t\ttcp dport 53 accept\n")
	b.WriteString("\t\tip protocol icmp accept\n")
	b.WriteString("\t\tmeta l4proto tcp reject with tcp reset\n")
	b.WriteString("\t\treject\n")
	b.WriteString("\t}\n")
}

func writePortChain(b *strings.Builder, a *attachment) {
	fmt.Fprintf(b, "\tchain %s {\n", portChain(a.HostIf))
	fmt.Fprintf(b, "\t\tether saddr != %s drop\n", a.MAC)
	// RARP is QEMU's self-announce of a migrated VM: it teaches the switches the NIC's new port.
	// It comes from the NIC's MAC (checked above) and claims no IP address.
	b.WriteString("\t\tether type 0x8035 accept\n")
	fmt.Fprintf(b, "\t\tether type arp arp saddr ether != %s drop\n", a.MAC)
	fmt.Fprintf(b, "\t\tether type arp arp saddr ip != { 0.0.0.0, %s } drop\n", a.IPv4)
	b.WriteString("\t\tether type arp accept\n")
	b.WriteString("\t\tether type ip udp sport 67 drop\n")
	fmt.Fprintf(b, "\t\tether type ip ip saddr %s accept\n", a.IPv4)
	b.WriteString("\t\tether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept\n")
	b.WriteString("\t\tdrop\n")
	b.WriteString("\t}\n")
}

// uplinkChain filters what arrives from the uplink; "port-" chains cannot take its name.
const uplinkChain = "uplink-in"

// writeUplinkChains renders the uplink's filters (see uplink.go). From the segment: only IPv4, ARP
// and RARP (the network is IPv4-only; RARP is QEMU's announce of a VM moved to another host),
// nothing from another host's gateway (same MAC as ours), no ARP for or from the gateway address
// (each host answers its own instances), no DHCP (each dnsmasq serves its own). Towards the
// segment: nothing of the host's own (the output hook sees only frames the host sends through the
// bridge, all from the gateway MAC; instances' frames are forwarded, not output).
func writeUplinkChains(b *strings.Builder, s *state) {
	gw := s.gateway()
	fmt.Fprintf(b, "\tchain %s {\n", uplinkChain)
	b.WriteString("\t\tether type != { arp, ip, 0x8035 } drop\n")
	fmt.Fprintf(b, "\t\tether saddr %s drop\n", s.BridgeMAC)
	fmt.Fprintf(b, "\t\tether type arp arp saddr ip %s drop\n", gw)
	fmt.Fprintf(b, "\t\tether type arp arp daddr ip %s drop\n", gw)
	b.WriteString("\t\tether type ip udp dport { 67, 68 } drop\n")
	b.WriteString("\t}\n")
	b.WriteString("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n")
	fmt.Fprintf(b, "\t\toifname %q drop\n", s.Uplink)
	b.WriteString("\t}\n")
}

// nftRemoval deletes a network's tables, whether or not they exist.
func nftRemoval(network string) string {
	t := tableName(network)
	return fmt.Sprintf("table bridge %s\ndelete table bridge %s\ntable ip %s\ndelete table ip %s\n", t, t, t, t)
}

func applyNft(ctx context.Context, ruleset string) error {
	if _, err := run(ctx, ruleset, "nft", "-f", "-"); err != nil {
		return fmt.Errorf("apply nftables rules: %w", err)
	}
	return nil
}
