package network

import (
	"net/netip"
	"strings"
	"testing"
)

func portState() *state {
	s := &state{Name: "net1", Subnet: netip.MustParsePrefix("10.1.2.0/24"), NAT: true, DNSDomain: "tandem",
		Attachments: map[string]*attachment{}}
	s.Attachments["c1/eth0"] = &attachment{Instance: "c1", NIC: "eth0", MAC: "00:16:3e:00:00:01",
		IPv4: netip.MustParseAddr("10.1.2.2"), HostIf: "tdmaaaa", Kind: "veth", Egress: "8Mbit"}
	s.Attachments["v1/eth0"] = &attachment{Instance: "v1", NIC: "eth0", MAC: "00:16:3e:00:00:02",
		IPv4: netip.MustParseAddr("10.1.2.3"), HostIf: "tdmbbbb", Kind: "tap"}
	s.Attachments["x1/eth0"] = &attachment{Instance: "x1", NIC: "eth0", MAC: "00:16:3e:00:00:03",
		IPv4: netip.MustParseAddr("10.1.2.4")} // attached, not plugged: no rules
	return s
}

func TestNftRuleset(t *testing.T) {
	want := `# tandem network net1: generated, replaced whole on every change
table bridge tandem-net1
delete table bridge tandem-net1
table bridge tandem-net1 {
	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname vmap { "tdmaaaa" : jump port-tdmaaaa, "tdmbbbb" : jump port-tdmbbbb }
	}
	chain port-tdmaaaa {
		ether saddr != 00:16:3e:00:00:01 drop
		ether type 0x8035 accept
		ether type arp arp saddr ether != 00:16:3e:00:00:01 drop
		ether type arp arp saddr ip != { 0.0.0.0, 10.1.2.2 } drop
		ether type arp accept
		ether type ip udp sport 67 drop
		ether type ip ip saddr 10.1.2.2 accept
		ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
		drop
	}
	chain port-tdmbbbb {
		ether saddr != 00:16:3e:00:00:02 drop
		ether type 0x8035 accept
		ether type arp arp saddr ether != 00:16:3e:00:00:02 drop
		ether type arp arp saddr ip != { 0.0.0.0, 10.1.2.3 } drop
		ether type arp accept
		ether type ip udp sport 67 drop
		ether type ip ip saddr 10.1.2.3 accept
		ether type ip ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
		drop
	}
}
table ip tandem-net1
delete table ip tandem-net1
table ip tandem-net1 {
	chain input {
		type filter hook input priority filter; policy accept;
		iifname != "net1" return
		ct state established,related accept
		udp dport { 53, 67 } accept
		tcp dport 53 accept
		ip protocol icmp accept
		meta l4proto tcp reject with tcp reset
		reject
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.1.2.0/24 ip daddr != { 10.1.2.0/24, 224.0.0.0/4, 255.255.255.255 } masquerade
	}
}
`
	if got := nftRuleset(portState()); got != want {
		t.Fatalf("ruleset:\n%s\nwant:\n%s", got, want)
	}
}

func TestNftRulesetNoPortsNoNAT(t *testing.T) {
	s := portState()
	s.NAT = false
	s.Attachments = map[string]*attachment{}
	got := nftRuleset(s)
	if strings.Contains(got, "vmap") || strings.Contains(got, "masquerade") {
		t.Fatalf("empty, NAT-less network should have no port jumps and no NAT:\n%s", got)
	}
	// The host's input filter stays: it does not depend on NAT.
	if !strings.Contains(got, "hook input") {
		t.Fatalf("NAT-less network lost its input filter:\n%s", got)
	}
	s.HostAccess = true
	if got = nftRuleset(s); strings.Contains(got, "table ip tandem-net1 {") {
		t.Fatalf("NAT-less network with host access should have no ip table:\n%s", got)
	}
	// The ip table is still deleted, so turning NAT off leaves no masquerade behind.
	if !strings.Contains(got, "delete table ip tandem-net1\n") {
		t.Fatalf("NAT table not removed:\n%s", got)
	}
}

// host access lifts the input filter and nothing else.
func TestNftRulesetHostAccess(t *testing.T) {
	s := portState()
	s.HostAccess = true
	got := nftRuleset(s)
	if strings.Contains(got, "hook input") || strings.Contains(got, "reject") {
		t.Fatalf("host access still filters input:\n%s", got)
	}
	if !strings.Contains(got, "masquerade") || !strings.Contains(got, "chain port-tdmaaaa") {
		t.Fatalf("host access dropped NAT or anti-spoofing:\n%s", got)
	}
}

func TestNftRemoval(t *testing.T) {
	want := "table bridge tandem-n\ndelete table bridge tandem-n\ntable ip tandem-n\ndelete table ip tandem-n\n"
	if got := nftRemoval("n"); got != want {
		t.Fatalf("got %q", got)
	}
}

func TestLimitCommands(t *testing.T) {
	if cmds := limitCommands("tdmx", "tdmi", "", ""); len(cmds) != 0 {
		t.Fatalf("no limits gave %v", cmds)
	}
	var got []string
	for _, c := range limitCommands("tdmx", "tdmi", "10Mbit", "1Gbit") {
		got = append(got, strings.Join(c, " "))
	}
	want := []string{
		"tc qdisc replace dev tdmx root tbf rate 10000000bit burst 32768 latency 50ms",
		"ip link set dev tdmi up",
		"tc qdisc replace dev tdmi root tbf rate 1000000000bit burst 2500000 latency 50ms",
		"tc qdisc replace dev tdmx handle ffff: ingress",
		"tc filter replace dev tdmx parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev tdmi",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
