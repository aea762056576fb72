package network

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tandem/internal/errdefs"
)

func TestValidateUplink(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string // "" = accepted
	}{
		{Config{Name: "lab", Subnet: "10.77.0.0/24"}, ""},
		{Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "eth1"}, ""},
		{Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "veth-lab.10"}, ""},
		{Config{Name: "lab", Uplink: "eth1"}, "needs an explicit subnet"},
		{Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "lab"}, "network's own bridge"},
		{Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "a-name-much-too-long"}, "not a valid Linux interface name"},
		{Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "eth 1"}, "not a valid Linux interface name"},
		{Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "../x"}, "not a valid Linux interface name"},
	} {
		err := validateUplink(c.cfg)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v: %v", c.cfg, err)
		case c.want != "" && (!errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want invalid with %q", c.cfg, err, c.want)
		}
	}
}

func uplinkState(t *testing.T) *state {
	s := portState()
	s.Uplink, s.BridgeMAC = "up0", "00:16:3e:aa:bb:cc"
	return s
}

// The uplink gets its own chain; the instance ports keep theirs, so frames from the segment are
// never judged by an instance's anti-spoofing rules.
func TestNftRulesetUplink(t *testing.T) {
	got := nftRuleset(uplinkState(t))
	for _, want := range []string{
		`iifname vmap { "tdmaaaa" : jump port-tdmaaaa, "tdmbbbb" : jump port-tdmbbbb, "up0" : jump uplink-in }`,
		`	chain uplink-in {
		ether type != { arp, ip, 0x8035 } drop
		ether saddr 00:16:3e:aa:bb:cc drop
		ether type arp arp saddr ip 10.1.2.1 drop
		ether type arp arp daddr ip 10.1.2.1 drop
		ether type ip udp dport { 67, 68 } drop
	}
	chain output {
		type filter hook output priority filter; policy accept;
		oifname "up0" drop
	}
`,
		// NAT leaves traffic within the subnet (instances on other hosts) alone.
		"ip saddr 10.1.2.0/24 ip daddr != { 10.1.2.0/24, 224.0.0.0/4, 255.255.255.255 } masquerade",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ruleset lacks\n%s\nin\n%s", want, got)
		}
	}
	if strings.Count(got, "chain port-") != 2 || strings.Contains(got, "port-up0") {
		t.Errorf("the uplink must not get a port chain:\n%s", got)
	}
	// Without ports, the uplink alone still gets its jump; without an uplink, no uplink chains.
	s := uplinkState(t)
	s.Attachments = map[string]*attachment{}
	if got := nftRuleset(s); !strings.Contains(got, `iifname vmap { "up0" : jump uplink-in }`) {
		t.Errorf("uplink-only ruleset:\n%s", got)
	}
	if got := nftRuleset(portState()); strings.Contains(got, "uplink") || strings.Contains(got, "hook output") {
		t.Errorf("a network without an uplink has uplink rules:\n%s", got)
	}
}

// Create refuses an unusable uplink before it touches the host (no root needed: it only looks).
func TestCreateRefusesBadUplink(t *testing.T) {
	ctx := context.Background()
	seeded := testState(t, "10.1.2.0/24")
	seeded.Uplink = "eth9"
	m, dir := seedManager(t, seeded)
	for _, c := range []struct {
		uplink string
		kind   error
		want   string
	}{
		{"lo", errdefs.ErrInvalidArgument, "loopback"},
		{"tdnosuch0", errdefs.ErrInvalidArgument, "no such interface"},
		{"eth9", errdefs.ErrConflict, `already the uplink of network "net1"`},
		{"net1", errdefs.ErrInvalidArgument, `the bridge of network "net1"`},
		{"n2", errdefs.ErrInvalidArgument, "network's own bridge"},
	} {
		_, err := m.Create(ctx, Config{Name: "n2", Subnet: "10.9.0.0/24", Uplink: c.uplink})
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("uplink %q: %v, want %v with %q", c.uplink, err, c.kind, c.want)
		}
	}
	entries := recordDirs(dir)
	if len(entries) != 1 || len(m.List(ctx)) != 1 {
		t.Fatalf("a refused create left something: %v", entries)
	}
}

// The uplink is recorded, survives a restart and is shown.
func TestUplinkPersists(t *testing.T) {
	s := testState(t, "10.77.0.0/24")
	s.Uplink = "eth1"
	_, dir := seedManager(t, s)
	m, err := NewManager(Options{Dir: dir, RunDir: filepath.Join(t.TempDir(), "run")})
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.Get(context.Background(), "net1")
	if err != nil || n.Uplink != "eth1" || n.Gateway != "10.77.0.1" {
		t.Fatalf("got %+v, %v", n, err)
	}
}

// A migration's destination takes over the source's lease: Attach with the MAC and address the
// NIC had works when both are free here, and Attach again (a restart) keeps them.
func TestAttachTakesOverLease(t *testing.T) {
	ctx := context.Background()
	m, dir := seedManager(t, testState(t, "10.77.0.0/24"))
	if _, err := m.Attach(ctx, "net1", "local", "eth0", AttachOptions{}); err != nil { // takes .2
		t.Fatal(err)
	}
	opts := AttachOptions{MAC: "00:16:3e:12:34:56", IPv4: "10.77.0.9"}
	l, err := m.Attach(ctx, "net1", "moved", "eth0", opts)
	if err != nil || l.MAC != opts.MAC || l.IPv4.String() != opts.IPv4 || l.CIDR() != "10.77.0.9/24" {
		t.Fatalf("takeover: %+v, %v", l, err)
	}
	if again, err := m.Attach(ctx, "net1", "moved", "eth0", AttachOptions{}); err != nil || again.MAC != l.MAC || again.IPv4 != l.IPv4 {
		t.Fatalf("attach again: %+v, %v", again, err)
	}
	hosts, _ := os.ReadFile(filepath.Join(dir, "net1", "dhcp-hosts"))
	if !strings.Contains(string(hosts), "00:16:3e:12:34:56,10.77.0.9,moved\n") {
		t.Fatalf("dnsmasq would not answer the moved NIC:\n%s", hosts)
	}
	// Taken here already: refused, and the NIC that has them keeps them.
	for _, o := range []AttachOptions{{MAC: "00:16:3e:00:00:99", IPv4: "10.77.0.9"}, {MAC: opts.MAC, IPv4: "10.77.0.10"}} {
		if _, err := m.Attach(ctx, "net1", "other", "eth0", o); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("%+v: %v, want conflict", o, err)
		}
	}
}

// A NIC cannot be plugged under the uplink's name: plug would take a veth uplink for a leftover.
func TestPlugRefusesUplinkName(t *testing.T) {
	ctx := context.Background()
	s := testState(t, "10.77.0.0/24")
	s.Uplink = "up0"
	m, _ := seedManager(t, s)
	l, err := m.Attach(ctx, "net1", "c1", "eth0", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.PlugTap(ctx, "net1", l, "up0"); !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "uplink") {
		t.Fatalf("plug as up0: %v, want conflict", err)
	}
}
