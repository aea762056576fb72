package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"tandem/internal/errdefs"
)

func testState(t *testing.T, cidr string) *state {
	t.Helper()
	return &state{
		Name: "net1", Subnet: netip.MustParsePrefix(cidr), NAT: true, DNSDomain: "tandem",
		BridgeMAC: stableMAC("bridge/net1", 0), Attachments: map[string]*attachment{},
	}
}

func mustAlloc(t *testing.T, s *state, inst, nic string, o AttachOptions) *attachment {
	t.Helper()
	a, err := s.allocate(inst, nic, o)
	if err != nil {
		t.Fatalf("allocate %s/%s: %v", inst, nic, err)
	}
	return a
}

func TestAllocateSequentialAndIdempotent(t *testing.T) {
	s := testState(t, "10.1.2.0/24")
	a := mustAlloc(t, s, "c1", "eth0", AttachOptions{})
	b := mustAlloc(t, s, "c2", "eth0", AttachOptions{})
	if a.IPv4.String() != "10.1.2.2" || b.IPv4.String() != "10.1.2.3" {
		t.Fatalf("got %s %s, want 10.1.2.2 10.1.2.3 (gateway is .1)", a.IPv4, b.IPv4)
	}
	again := mustAlloc(t, s, "c1", "eth0", AttachOptions{})
	if again.IPv4 != a.IPv4 || again.MAC != a.MAC {
		t.Fatalf("second attach changed the NIC: %+v -> %+v", a, again)
	}
	if len(s.Attachments) != 2 {
		t.Fatalf("attachments = %d, want 2", len(s.Attachments))
	}
	if a.MAC == b.MAC || a.MAC[:8] != macPrefix {
		t.Fatalf("MACs %s %s: want distinct, prefix %s", a.MAC, b.MAC, macPrefix)
	}
}

func TestAllocateMACIsStable(t *testing.T) {
	s1, s2 := testState(t, "10.1.2.0/24"), testState(t, "10.9.9.0/24")
	a := mustAlloc(t, s1, "web", "eth0", AttachOptions{})
	s1.release("web", "eth0")
	b := mustAlloc(t, s1, "web", "eth0", AttachOptions{})
	c := mustAlloc(t, s2, "web", "eth0", AttachOptions{})
	if a.MAC != b.MAC || a.MAC != c.MAC {
		t.Fatalf("generated MAC not stable: %s %s %s", a.MAC, b.MAC, c.MAC)
	}
}

func TestAllocateRoundRobinAfterRelease(t *testing.T) {
	s := testState(t, "10.1.2.0/24")
	a := mustAlloc(t, s, "c1", "eth0", AttachOptions{})
	s.release("c1", "eth0")
	b := mustAlloc(t, s, "c2", "eth0", AttachOptions{})
	if b.IPv4 == a.IPv4 {
		t.Fatalf("released %s handed out again at once", a.IPv4)
	}
}

func TestAllocateStatic(t *testing.T) {
	s := testState(t, "10.1.2.0/24")
	a := mustAlloc(t, s, "c1", "eth0", AttachOptions{IPv4: "10.1.2.50", MAC: "00:16:3E:AA:BB:CC"})
	if a.IPv4.String() != "10.1.2.50" || !a.Static || a.MAC != "00:16:3e:aa:bb:cc" {
		t.Fatalf("got %+v", a)
	}
	cases := []struct {
		ip   string
		kind error
	}{
		{"10.1.2.50", errdefs.ErrConflict},
		{"10.1.3.5", errdefs.ErrInvalidArgument},
		{"10.1.2.0", errdefs.ErrInvalidArgument},
		{"10.1.2.1", errdefs.ErrInvalidArgument},
		{"10.1.2.255", errdefs.ErrInvalidArgument},
		{"fd00::1", errdefs.ErrInvalidArgument},
		{"nonsense", errdefs.ErrInvalidArgument},
	}
	for _, c := range cases {
		before := len(s.Attachments)
		_, err := s.allocate("c2", "eth0", AttachOptions{IPv4: c.ip})
		if !errors.Is(err, c.kind) {
			t.Errorf("static %s: err = %v, want kind %v", c.ip, err, c.kind)
		}
		if len(s.Attachments) != before {
			t.Errorf("static %s: a refused request changed the state", c.ip)
		}
	}
	// Dynamic allocations skip the static address.
	for i := range 60 {
		b := mustAlloc(t, s, "d", string(rune('a'+i%26))+string(rune('a'+i/26)), AttachOptions{})
		if b.IPv4 == a.IPv4 {
			t.Fatalf("dynamic allocation reused static %s", a.IPv4)
		}
	}
	// Moving a NIC to another free static address works; the old one becomes free.
	m := mustAlloc(t, s, "c1", "eth0", AttachOptions{IPv4: "10.1.2.200"})
	if m.IPv4.String() != "10.1.2.200" {
		t.Fatalf("moved to %s", m.IPv4)
	}
	mustAlloc(t, s, "c3", "eth0", AttachOptions{IPv4: "10.1.2.50"})
}

func TestAllocateMACRequests(t *testing.T) {
	s := testState(t, "10.1.2.0/24")
	mustAlloc(t, s, "c1", "eth0", AttachOptions{MAC: "00:16:3e:00:00:01"})
	for mac, kind := range map[string]error{
		"00:16:3e:00:00:01": errdefs.ErrConflict,
		s.BridgeMAC:         errdefs.ErrConflict,
		"01:00:5e:00:00:01": errdefs.ErrInvalidArgument,
		"00:00:00:00:00:00": errdefs.ErrInvalidArgument,
		"zz:16:3e:00:00:01": errdefs.ErrInvalidArgument,
	} {
		if _, err := s.allocate("c2", "eth0", AttachOptions{MAC: mac}); !errors.Is(err, kind) {
			t.Errorf("MAC %s: err = %v, want %v", mac, err, kind)
		}
	}
}

func TestAllocateExhaustion(t *testing.T) {
	s := testState(t, "10.1.2.0/29") // .2-.6: 5 addresses
	seen := map[netip.Addr]bool{}
	for i := range 5 {
		a := mustAlloc(t, s, "c", string(rune('0'+i)), AttachOptions{})
		if seen[a.IPv4] || !s.Subnet.Contains(a.IPv4) || a.IPv4 == s.gateway() || a.IPv4 == s.broadcast() {
			t.Fatalf("bad address %s", a.IPv4)
		}
		seen[a.IPv4] = true
	}
	_, err := s.allocate("c", "9", AttachOptions{})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("6th allocation in a /29: err = %v, want conflict", err)
	}
	if len(s.Attachments) != 5 {
		t.Fatalf("a failed allocation was recorded")
	}
	s.release("c", "2")
	if a := mustAlloc(t, s, "c", "9", AttachOptions{}); a.IPv4.String() != "10.1.2.4" {
		t.Fatalf("after a release got %s, want the freed 10.1.2.4", a.IPv4)
	}
}

func TestAllocateLimits(t *testing.T) {
	s := testState(t, "10.1.2.0/24")
	if _, err := s.allocate("c1", "eth0", AttachOptions{Ingress: "fast"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad rate: err = %v", err)
	}
	a := mustAlloc(t, s, "c1", "eth0", AttachOptions{Ingress: "10Mbit", Egress: "1Gbit"})
	if a.Ingress != "10Mbit" || a.Egress != "1Gbit" {
		t.Fatalf("limits not kept: %+v", a)
	}
}

// seedManager writes network records the way Create does and opens a Manager on them, without
// touching the host.
func seedManager(t *testing.T, nets ...*state) (*Manager, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "networks")
	for _, s := range nets {
		if err := os.MkdirAll(filepath.Join(dir, s.Name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := saveState(filepath.Join(dir, s.Name), s); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "crashed"), 0o755) // a Create that died before its record
	m, err := NewManager(Options{Dir: dir, RunDir: filepath.Join(t.TempDir(), "run")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "crashed")); !os.IsNotExist(err) {
		t.Fatalf("leftover directory not removed: %v", err)
	}
	return m, dir
}

func TestAttachPersists(t *testing.T) {
	ctx := context.Background()
	m, dir := seedManager(t, testState(t, "10.1.2.0/24"))
	l1, err := m.Attach(ctx, "net1", "c1", "eth0", AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, "net1", "c2", "eth0", AttachOptions{IPv4: "10.1.2.77"}); err != nil {
		t.Fatal(err)
	}
	if l1.Gateway.String() != "10.1.2.1" || l1.Prefix != 24 || l1.DNS != l1.Gateway || l1.CIDR() != "10.1.2.2/24" {
		t.Fatalf("lease %+v", l1)
	}
	// A restarted daemon sees the same leases, and Attach again returns them unchanged.
	m2, err := NewManager(Options{Dir: dir, RunDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	l1b, err := m2.Attach(ctx, "net1", "c1", "eth0", AttachOptions{})
	if err != nil || l1b != l1 {
		t.Fatalf("after restart: %+v, %v; want %+v", l1b, err, l1)
	}
	l2, _ := m2.Lease(ctx, "net1", "c2", "eth0")
	if l2.IPv4.String() != "10.1.2.77" {
		t.Fatalf("static lease lost: %+v", l2)
	}
	hosts, _ := os.ReadFile(filepath.Join(dir, "net1", "dhcp-hosts"))
	if want := l1.MAC + ",10.1.2.2,c1\n" + l2.MAC + ",10.1.2.77,c2\n"; string(hosts) != want {
		t.Fatalf("dhcp-hosts = %q, want %q", hosts, want)
	}
	if err := m2.Delete(ctx, "net1"); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("delete of a network in use: %v, want conflict", err)
	}
	for _, c := range []string{"c1", "c2"} {
		if err := m2.Detach(ctx, "net1", c, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := m2.Detach(ctx, "net1", "c1", "eth0"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	m3, _ := NewManager(Options{Dir: dir, RunDir: t.TempDir()})
	if n, _ := m3.Get(ctx, "net1"); len(n.Leases) != 0 {
		t.Fatalf("detach not persisted: %+v", n.Leases)
	}
	if _, err := m3.Attach(ctx, "nope", "c1", "eth0", AttachOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("attach to a missing network: %v", err)
	}
	if _, err := m3.Attach(ctx, "net1", "-bad", "eth0", AttachOptions{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("attach with a bad instance name: %v", err)
	}
}

func TestAttachConcurrent(t *testing.T) {
	ctx := context.Background()
	m, _ := seedManager(t, testState(t, "10.1.2.0/26")) // 61 addresses
	var wg sync.WaitGroup
	leases := make([]Lease, 40)
	errs := make([]error, 40)
	for i := range 40 {
		wg.Go(func() {
			leases[i], errs[i] = m.Attach(ctx, "net1", fmt.Sprintf("c%d", i), "eth0", AttachOptions{})
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for i, l := range leases {
		if errs[i] != nil || seen[l.IPv4] {
			t.Fatalf("attach %d: %+v, %v (duplicate or error)", i, l, errs[i])
		}
		seen[l.IPv4] = true
	}
	for i := range 40 {
		wg.Go(func() { errs[i] = m.Detach(ctx, "net1", fmt.Sprintf("c%d", i), "eth0") })
	}
	wg.Wait()
	if n, _ := m.Get(ctx, "net1"); len(n.Leases) != 0 {
		t.Fatalf("leases left: %d", len(n.Leases))
	}
}
