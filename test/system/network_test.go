package system

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/network"
	"tandem/internal/network/nettest"
	"tandem/internal/testenv"
)

// TestNetwork drives the network manager in a fresh network namespace, with helper namespaces
// standing in for containers: DHCP, ping by IP and name, NAT, anti-spoofing, rate limits, restart
// and reboot recovery, address reuse, 50 plug cycles, delete.

func TestNetwork(t *testing.T) {
	if !nettest.InFreshNetns(t, "nft", "dnsmasq", "busybox", "nsenter") {
		return // ran in a fresh network namespace, or skipped
	}
	env := nettest.NewEnv(t)
	nt := &netTest{Env: env, leases: map[string]network.Lease{}}
	nt.opts = network.Options{Dir: filepath.Join(env.Dir, "networks"), RunDir: filepath.Join(env.Dir, "run")}
	var err error
	if nt.m, err = network.NewManager(nt.opts); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, st := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Validation", nt.validation},
		{"DHCPPingDNSNAT", nt.connectivity},
		{"AntiSpoofing", nt.antiSpoofing},
		{"RateLimits", nt.rateLimits},
		{"RestartAndReboot", nt.restartAndReboot},
		{"AddressReuse", nt.addressReuse},
		{"Cycles", nt.cycles},
		{"Delete", nt.delete},
	} {
		if !t.Run(st.name, st.fn) {
			break // later steps build on earlier ones
		}
	}
	t.Logf("network system test took %s", time.Since(start).Round(time.Millisecond))
}

// netTest drives the network manager against helper namespaces standing in for containers.
type netTest struct {
	*nettest.Env
	m       *network.Manager
	opts    network.Options
	leases  map[string]network.Lease
	gateway string
}

// plugContainer attaches and plugs a veth NIC for a stand-in container.
func (nt *netTest) plugContainer(t *testing.T, inst string, opts network.AttachOptions) network.Lease {
	t.Helper()
	ctx := testenv.Context(t, 5*time.Minute)
	l, err := nt.m.Attach(ctx, network.DefaultName, inst, "eth0", opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := nt.m.PlugVeth(ctx, network.DefaultName, l, nt.NSPath(inst), "eth0", ""); err != nil {
		t.Fatal(err)
	}
	nt.leases[inst] = l
	return l
}

// dhcp gets a stand-in container its lease and checks it is the one IPAM chose.
func (nt *netTest) dhcp(t *testing.T, inst string) {
	t.Helper()
	start := time.Now()
	got, err := nt.DHCP(inst)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(nt.opts.Dir, network.DefaultName, "dnsmasq.log"))
		t.Fatalf("udhcpc in %s: %v\ndnsmasq log:\n%s", inst, err, log)
	}
	t.Logf("%s: DHCP lease %q in %s", inst, got, time.Since(start).Round(time.Millisecond))
	if want := fmt.Sprintf("%s %s %s tandem", nt.leases[inst].IPv4, nt.gateway, nt.gateway); got != want {
		t.Fatalf("%s: DHCP gave %q, want the static lease %q", inst, got, want)
	}
}

func (nt *netTest) validation(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	n, err := nt.m.EnsureDefault(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nt.gateway = n.Gateway
	t.Logf("default network %s: subnet %s gateway %s", n.Name, n.Subnet, n.Gateway)
	before := nt.snapshot(t)
	for _, c := range []struct {
		cfg  network.Config
		kind error
		want string
	}{
		{network.Config{Name: "n2", Subnet: n.Subnet}, errdefs.ErrInvalidArgument, "overlaps"},
		{network.Config{Name: "n2", Subnet: "10.1.2.0/33"}, errdefs.ErrInvalidArgument, "not a CIDR"},
		{network.Config{Name: "a-name-too-long-for-linux"}, errdefs.ErrInvalidArgument, "at most 15"},
		{network.Config{Name: "lo"}, errdefs.ErrAlreadyExists, "interface named"},
		{network.Config{Name: "n2", Subnet: "127.0.5.0/24"}, errdefs.ErrInvalidArgument, "loopback"},
	} {
		_, err := nt.m.Create(ctx, c.cfg)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("create %+v: %v, want %v with %q", c.cfg, err, c.kind, c.want)
		}
	}
	// A subnet overlapping a host route (an address outside tandem) is refused too.
	nt.Sh(t, "ip", "link", "add", "tdtdummy", "up", "type", "veth") // no dummy module on this kernel
	nt.Sh(t, "ip", "addr", "add", "10.250.0.1/16", "dev", "tdtdummy")
	_, err = nt.m.Create(ctx, network.Config{Name: "n2", Subnet: "10.250.7.0/24"})
	nt.Sh(t, "ip", "link", "del", "tdtdummy")
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "host route") {
		t.Errorf("overlap with a host route: %v", err)
	}
	if after := nt.snapshot(t); after != before {
		t.Errorf("refused creates changed the host:\nbefore %s\nafter  %s", before, after)
	}
}

// snapshot summarizes what tandem could leave behind: interfaces, nft tables, dnsmasq processes.
func (nt *netTest) snapshot(t *testing.T) string {
	tables := strings.Fields(strings.ReplaceAll(nt.Sh(t, "nft", "list", "tables"), "\n", " "))
	var pids []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), "dnsmasq") && strings.Contains(string(b), nt.opts.Dir) {
			pids = append(pids, e.Name())
		}
	}
	return fmt.Sprintf("links=%v tables=%v dnsmasq=%v", nt.Links(t), tables, pids)
}

func (nt *netTest) connectivity(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	for _, c := range []string{"c1", "c2"} {
		nt.AddNS(t, c)
		nt.plugContainer(t, c, network.AttachOptions{})
	}
	// A VM's NIC: a tap on the bridge, with its own rules (a real VM is the VM driver's test).
	lv, err := nt.m.Attach(ctx, network.DefaultName, "v1", "eth0", network.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := nt.m.PlugTap(ctx, network.DefaultName, lv, ""); err != nil {
		t.Fatal(err)
	}
	tap := nt.m.HostIfName("v1", "eth0")
	if out := nt.Sh(t, "ip", "-d", "link", "show", tap); !strings.Contains(out, "master tandem0") || !strings.Contains(out, "tun type tap") {
		t.Fatalf("tap not on the bridge:\n%s", out)
	}
	if out := nt.Sh(t, "nft", "list", "table", "bridge", "tandem-tandem0"); !strings.Contains(out, "chain port-"+tap) {
		t.Fatalf("no anti-spoofing chain for the tap:\n%s", out)
	}
	nt.dhcp(t, "c1")
	nt.dhcp(t, "c2")
	c2ip := nt.leases["c2"].IPv4.String()
	for _, target := range []string{c2ip, nt.gateway} {
		if err := nt.Ping("c1", target); err != nil {
			t.Fatalf("ping %s: %v", target, err)
		}
	}
	if out, err := nt.In("c1", "busybox", "nslookup", "c2.tandem", nt.gateway); err != nil || !strings.Contains(out, c2ip) {
		t.Fatalf("c2.tandem does not resolve to %s: %v\n%s", c2ip, err, out)
	}
	// By name, through the network's DNS as a container's resolv.conf would have it.
	nt.Resolver("c1", nt.gateway, "tandem")
	for _, name := range []string{"c2.tandem", "c2"} {
		if err := nt.Ping("c1", name); err != nil {
			t.Fatalf("ping by name %s: %v", name, err)
		}
	}
	// NAT: a server in an "outside" namespace with no route back to the subnet is reachable only
	// through masquerade.
	www := filepath.Join(nt.Dir, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "hello"), []byte("hello through NAT\n"), 0o644)
	outsideServer(t, nt.Env, www)
	if body, _, err := nt.Fetch("c1", "http://198.51.100.2:8080/hello"); err != nil || body != "hello through NAT\n" {
		t.Fatalf("outside server through NAT: %q, %v", body, err)
	}
}

// outsideServer serves dir on http://198.51.100.2:8080 from a namespace "out" that only the test's
// own namespace (the host) reaches: instances get there only through NAT.
func outsideServer(t *testing.T, env *nettest.Env, dir string) {
	out := env.AddNS(t, "out")
	env.Sh(t, "ip", "link", "add", "tdtup", "type", "veth", "peer", "name", "up0", "netns", out)
	env.Sh(t, "ip", "addr", "add", "198.51.100.1/24", "dev", "tdtup")
	env.Sh(t, "ip", "link", "set", "tdtup", "up")
	env.Sh(t, "ip", "-n", out, "addr", "add", "198.51.100.2/24", "dev", "up0")
	env.Sh(t, "ip", "-n", out, "link", "set", "up0", "up")
	env.BG(t, "out", "busybox", "httpd", "-f", "-p", "8080", "-h", dir)
}

func (nt *netTest) antiSpoofing(t *testing.T) {
	c1 := nt.NS("c1")
	l := nt.leases["c1"]
	c2ip := nt.leases["c2"].IPv4.String()
	restore := func() {
		nt.Sh(t, "ip", "-n", c1, "link", "set", "eth0", "address", l.MAC)
		nt.Sh(t, "ip", "-n", c1, "addr", "flush", "dev", "eth0")
		nt.Sh(t, "ip", "-n", c1, "addr", "add", l.CIDR(), "dev", "eth0")
		nt.Sh(t, "ip", "-n", c1, "route", "replace", "default", "via", nt.gateway)
		if err := nt.Ping("c1", c2ip); err != nil {
			t.Fatalf("after restoring c1's own address: %v", err)
		}
	}
	unassigned := l.IPv4.As4()
	unassigned[3] += 100
	for _, spoof := range []string{netip.AddrFrom4(unassigned).String(), c2ip} {
		nt.Sh(t, "ip", "-n", c1, "addr", "flush", "dev", "eth0")
		nt.Sh(t, "ip", "-n", c1, "addr", "add", fmt.Sprintf("%s/%d", spoof, l.Prefix), "dev", "eth0")
		nt.Sh(t, "ip", "-n", nt.NS("c2"), "neigh", "flush", "all")
		for _, target := range []string{c2ip, nt.gateway} {
			if target != spoof && nt.Ping("c1", target) == nil {
				t.Errorf("c1 reached %s with the address %s it was not given", target, spoof)
			}
		}
		restore()
	}
	nt.Sh(t, "ip", "-n", c1, "link", "set", "eth0", "address", "00:16:3e:de:ad:01")
	if nt.Ping("c1", c2ip) == nil {
		t.Errorf("c1 reached c2 from a MAC it was not given")
	}
	restore()
}

func (nt *netTest) rateLimits(t *testing.T) {
	www := filepath.Join(nt.Dir, "www")
	os.WriteFile(filepath.Join(www, "blob"), make([]byte, 1<<20), 0o644)
	for _, c := range []string{"c1", "c2"} {
		nt.BG(t, c, "busybox", "httpd", "-f", "-p", "8000", "-h", www)
	}
	// 1 MiB into c1 (c1 downloads from c2) and out of c1 (c2 downloads from c1).
	measure := func(what string) (in, out time.Duration) {
		t.Helper()
		took := map[string]time.Duration{}
		for from, to := range map[string]string{"c1": "c2", "c2": "c1"} {
			body, d, err := nt.Fetch(from, fmt.Sprintf("http://%s:8000/blob", nt.leases[to].IPv4))
			if err != nil || len(body) != 1<<20 {
				t.Fatalf("%s: 1 MiB %s <- %s: %d bytes, %v", what, from, to, len(body), err)
			}
			took[from] = d
		}
		t.Logf("%s: 1 MiB into c1 in %s, out of c1 in %s", what, took["c1"].Round(time.Millisecond), took["c2"].Round(time.Millisecond))
		return took["c1"], took["c2"]
	}
	limit := func(ingress, egress string) {
		opts := network.AttachOptions{Ingress: ingress, Egress: egress}
		if _, err := nt.m.Attach(testenv.Context(t, 5*time.Minute), network.DefaultName, "c1", "eth0", opts); err != nil {
			t.Fatal(err)
		}
	}
	if in, out := measure("unlimited"); in > 500*time.Millisecond || out > 500*time.Millisecond {
		t.Fatalf("unlimited transfer too slow to compare")
	}
	limit("8Mbit", "8Mbit") // 1 MB/s, applied live: about a second per MiB
	in, out := measure("limited to 8Mbit")
	for what, d := range map[string]time.Duration{"ingress": in, "egress": out} {
		if d < 700*time.Millisecond || d > 20*time.Second {
			t.Errorf("%s at 8Mbit: 1 MiB took %s, want about 1s", what, d)
		}
	}
	limit("", "")
	if in, out = measure("limits cleared"); in > 500*time.Millisecond || out > 500*time.Millisecond {
		t.Errorf("clearing the limits did not take effect")
	}
}

func (nt *netTest) dnsmasqPid(t *testing.T) int {
	b, err := os.ReadFile(filepath.Join(nt.opts.RunDir, "dnsmasq-tandem0.pid"))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	return pid
}

// restartAndReboot: a daemon restart leaves everything running; after a "reboot" (bridge, rules,
// dnsmasq and NICs gone) Recover and a re-plug give the instances their old addresses back.
func (nt *netTest) restartAndReboot(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	pid := nt.dnsmasqPid(t)
	m, err := network.NewManager(nt.opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if got := nt.dnsmasqPid(t); got != pid {
		t.Fatalf("Recover restarted a running dnsmasq: %d -> %d", pid, got)
	}
	if err := nt.Ping("c1", "c2"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	syscall.Kill(pid, syscall.SIGKILL) // our own dnsmasq, found by its pidfile
	for _, l := range []string{"tandem0", m.HostIfName("c1", "eth0"), m.HostIfName("c2", "eth0"), m.HostIfName("v1", "eth0")} {
		nt.Sh(t, "ip", "link", "del", l)
	}
	nt.Sh(t, "nft", "delete table bridge tandem-tandem0; delete table ip tandem-tandem0")
	if nt.m, err = network.NewManager(nt.opts); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := nt.m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Recover after reboot took %s", time.Since(start).Round(time.Millisecond))
	for _, c := range []string{"c1", "c2"} {
		before := nt.leases[c]
		if l := nt.plugContainer(t, c, network.AttachOptions{}); l.MAC != before.MAC || l.IPv4 != before.IPv4 {
			t.Fatalf("%s: lease changed across reboot: %+v -> %+v", c, before, l)
		}
		nt.dhcp(t, c)
	}
	if err := nt.Ping("c1", "c2"); err != nil {
		t.Fatalf("after reboot: %v", err)
	}
	lv, _ := nt.m.Lease(ctx, network.DefaultName, "v1", "eth0")
	if err := nt.m.PlugTap(ctx, network.DefaultName, lv, ""); err != nil {
		t.Fatal(err)
	}
}

// addressReuse: an address released by one instance, which dnsmasq still had a lease for, is
// handed to another instance (asked for statically) by DHCP.
func (nt *netTest) addressReuse(t *testing.T) {
	old := nt.leases["c2"]
	if err := nt.m.Detach(testenv.Context(t, 5*time.Minute), network.DefaultName, "c2", "eth0"); err != nil {
		t.Fatal(err)
	}
	nt.AddNS(t, "c3")
	if l := nt.plugContainer(t, "c3", network.AttachOptions{IPv4: old.IPv4.String()}); l.MAC == old.MAC {
		t.Fatalf("c3 got c2's MAC")
	}
	nt.dhcp(t, "c3")
	if err := nt.Ping("c1", "c3"); err != nil {
		t.Fatalf("ping c3 by name: %v", err)
	}
}

// cycles: attach, plug, unplug, detach 50 NICs (with limits); nothing may be left behind.
func (nt *netTest) cycles(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	nt.AddNS(t, "cyc")
	before := nt.snapshot(t)
	start := time.Now()
	for i := range 50 {
		inst := fmt.Sprintf("cyc%d", i)
		l, err := nt.m.Attach(ctx, network.DefaultName, inst, "eth0", network.AttachOptions{Egress: "100Mbit", Ingress: "100Mbit"})
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			err = nt.m.PlugVeth(ctx, network.DefaultName, l, nt.NSPath("cyc"), "eth0", "")
		} else {
			err = nt.m.PlugTap(ctx, network.DefaultName, l, "")
		}
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := nt.m.Unplug(ctx, network.DefaultName, inst, "eth0"); err != nil {
			t.Fatal(err)
		}
		if err := nt.m.Detach(ctx, network.DefaultName, inst, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("50 attach/plug/unplug/detach cycles took %s", time.Since(start).Round(time.Millisecond))
	if after := nt.snapshot(t); after != before {
		t.Errorf("cycles left something:\nbefore %s\nafter  %s", before, after)
	}
	rules := nt.Sh(t, "nft", "list", "table", "bridge", "tandem-tandem0")
	if n := strings.Count(rules, "chain port-"); n != 3 {
		t.Errorf("%d port chains after the cycles, want 3 (c1, c3, v1):\n%s", n, rules)
	}
	hosts, _ := os.ReadFile(filepath.Join(nt.opts.Dir, "tandem0", "dhcp-hosts"))
	if n := strings.Count(string(hosts), "\n"); n != 3 {
		t.Errorf("dhcp-hosts has %d entries after the cycles, want 3:\n%s", n, hosts)
	}
}

func (nt *netTest) delete(t *testing.T) {
	ctx := testenv.Context(t, 5*time.Minute)
	if err := nt.m.Delete(ctx, network.DefaultName); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("delete of a network in use: %v, want conflict", err)
	}
	for _, inst := range []string{"c1", "c3", "v1"} {
		if err := nt.m.Detach(ctx, network.DefaultName, inst, "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := nt.m.Delete(ctx, network.DefaultName); err != nil {
		t.Fatal(err)
	}
	snap := nt.snapshot(t)
	if strings.Contains(snap, "tandem") || strings.Contains(snap, "tdm") || !strings.HasSuffix(snap, "dnsmasq=[]") {
		t.Errorf("delete left something: %s", snap)
	}
	for _, p := range []string{filepath.Join(nt.opts.Dir, "tandem0"), filepath.Join(nt.opts.RunDir, "dnsmasq-tandem0.pid")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("delete left %s", p)
		}
	}
}
