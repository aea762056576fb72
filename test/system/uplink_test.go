package system

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/network"
	"tandem/internal/network/nettest"
)

// TestUplinkAcrossHosts: two "hosts" (network namespaces ha and hb, each with its own network
// manager, run on a thread that joined the namespace) are cabled to a "lab switch" (bridge lab0 in
// the test's namespace) by veths whose host ends, up0, are the uplinks of a network "lab" with the
// same subnet on both. Instances (namespaces) on each host reach each other and an on-link client
// on the switch; an instance moved from ha to hb keeps its MAC and address, and its gratuitous ARP
// moves the switch's forwarding entry at once. Then recovery after a "reboot", and delete.
func TestUplinkAcrossHosts(t *testing.T) {
	if !nettest.InFreshNetns(t, "nft", "dnsmasq", "busybox", "nsenter") {
		return // ran in a fresh network namespace, or skipped
	}
	u := &uplinkTest{Env: nettest.NewEnv(t), m: map[string]*network.Manager{}, leases: map[string]network.Lease{}}
	u.Sh(t, "ip", "link", "add", "lab0", "up", "type", "bridge", "forward_delay", "0")
	for _, h := range []string{"ha", "hb"} {
		u.AddNS(t, h)
		u.Sh(t, "ip", "link", "add", "lab-"+h, "master", "lab0", "up", "type", "veth", "peer", "name", "up0", "netns", u.NSPath(h))
		u.newManager(t, h)
	}
	u.AddNS(t, "cl") // an on-link machine on the switch, not on any tandem host
	u.Sh(t, "ip", "link", "add", "lab-cl", "master", "lab0", "up", "type", "veth", "peer", "name", "eth0", "netns", u.NSPath("cl"))
	u.Sh(t, "ip", "-n", u.NS("cl"), "addr", "add", "10.77.0.200/24", "dev", "eth0")
	u.Sh(t, "ip", "-n", u.NS("cl"), "link", "set", "eth0", "up")
	for _, st := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Validation", u.validation},
		{"Create", u.create},
		{"AcrossHosts", u.acrossHosts},
		{"Move", u.move},
		{"MoveVM", u.moveVM},
		{"Recover", u.recover},
		{"Delete", u.delete},
	} {
		if !t.Run(st.name, st.fn) {
			break // later steps build on earlier ones
		}
	}
}

type uplinkTest struct {
	*nettest.Env
	m      map[string]*network.Manager // by host namespace
	leases map[string]network.Lease    // by instance
}

func (u *uplinkTest) opts(host string) network.Options {
	return network.Options{Dir: filepath.Join(u.Dir, host, "networks"), RunDir: filepath.Join(u.Dir, host, "run")}
}

// newManager opens host's manager afresh, as a restarted daemon would.
func (u *uplinkTest) newManager(t *testing.T, host string) {
	m, err := network.NewManager(u.opts(host))
	if err != nil {
		t.Fatal(err)
	}
	u.m[host] = m
}

// on runs fn with host's manager in host's network namespace: the manager's ip, nft and dnsmasq
// commands act there.
func (u *uplinkTest) on(host string, fn func(context.Context, *network.Manager) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return network.InNetns(u.NSPath(host), func() error { return fn(ctx, u.m[host]) })
}

func (u *uplinkTest) must(t *testing.T, host string, fn func(context.Context, *network.Manager) error) {
	t.Helper()
	if err := u.on(host, fn); err != nil {
		t.Fatalf("on %s: %v", host, err)
	}
}

// link returns an interface's master and whether it is up, in host's namespace.
func (u *uplinkTest) link(t *testing.T, host, name string) (string, bool) {
	t.Helper()
	var l []struct {
		Master string   `json:"master"`
		Flags  []string `json:"flags"`
	}
	if err := json.Unmarshal([]byte(u.Sh(t, "ip", "-n", u.NS(host), "-j", "link", "show", "dev", name)), &l); err != nil || len(l) != 1 {
		t.Fatalf("ip link show %s in %s: %v", name, host, err)
	}
	return l[0].Master, slices.Contains(l[0].Flags, "UP")
}

// switchPort returns the port of lab0 that the switch sends mac to ("" when it does not know).
func (u *uplinkTest) switchPort(t *testing.T, mac string) string {
	t.Helper()
	var fdb []struct {
		MAC    string `json:"mac"`
		IfName string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(u.Sh(t, "bridge", "-j", "fdb", "show", "br", "lab0")), &fdb); err != nil {
		t.Fatal(err)
	}
	for _, e := range fdb {
		if e.MAC == mac {
			return e.IfName
		}
	}
	return ""
}

// plug attaches and plugs an instance (a new namespace) on host.
func (u *uplinkTest) plug(t *testing.T, host, inst, ns string, opts network.AttachOptions) network.Lease {
	t.Helper()
	u.AddNS(t, ns)
	var l network.Lease
	u.must(t, host, func(ctx context.Context, m *network.Manager) error {
		var err error
		if l, err = m.Attach(ctx, "lab", inst, "eth0", opts); err != nil {
			return err
		}
		return m.PlugVeth(ctx, "lab", l, u.NSPath(ns), "eth0", "")
	})
	u.leases[inst] = l
	return l
}

func (u *uplinkTest) ping(t *testing.T, from, to string) {
	t.Helper()
	if err := u.Ping(from, to); err != nil {
		t.Errorf("ping %s from %s: %v", to, from, err)
	}
}

// snapshot is what a refused create could leave behind on host: interfaces, masters, nft tables.
func (u *uplinkTest) snapshot(t *testing.T, host string) string {
	return u.Sh(t, "ip", "-n", u.NS(host), "-br", "-d", "link") + u.Sh(t, "ip", "netns", "exec", u.NS(host), "nft", "list", "tables")
}

func (u *uplinkTest) validation(t *testing.T) {
	ns := u.NS("ha")
	u.Sh(t, "ip", "-n", ns, "link", "add", "foreign", "type", "bridge")
	u.Sh(t, "ip", "-n", ns, "link", "add", "upx", "master", "foreign", "type", "veth", "peer", "name", "upy")
	u.Sh(t, "ip", "-n", ns, "addr", "add", "192.0.2.1/24", "dev", "upy")
	defer u.Sh(t, "ip", "-n", ns, "link", "del", "foreign")
	defer u.Sh(t, "ip", "-n", ns, "link", "del", "upx")
	before := u.snapshot(t, "ha")
	for _, c := range []struct {
		uplink string
		kind   error
		want   string
	}{
		{"nosuch0", errdefs.ErrInvalidArgument, "no such interface"},
		{"upx", errdefs.ErrConflict, `already enslaved to "foreign"`},
		{"upy", errdefs.ErrConflict, "has addresses (192.0.2.1/24)"},
		{"foreign", errdefs.ErrInvalidArgument, "is a bridge"},
		{"lab", errdefs.ErrInvalidArgument, "network's own bridge"},
	} {
		err := u.on("ha", func(ctx context.Context, m *network.Manager) error {
			_, err := m.Create(ctx, network.Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: c.uplink})
			return err
		})
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("uplink %q: %v, want %v with %q", c.uplink, err, c.kind, c.want)
		}
	}
	if after := u.snapshot(t, "ha"); after != before {
		t.Errorf("refused creates changed the host:\nbefore\n%s\nafter\n%s", before, after)
	}
}

func (u *uplinkTest) create(t *testing.T) {
	nat := false
	for _, h := range []string{"ha", "hb"} {
		cfg := network.Config{Name: "lab", Subnet: "10.77.0.0/24", Uplink: "up0"}
		if h == "hb" {
			cfg.NAT = &nat // one host with NAT, one without: neither may change traffic within the subnet
		}
		u.must(t, h, func(ctx context.Context, m *network.Manager) error {
			n, err := m.Create(ctx, cfg)
			if err == nil && (n.Uplink != "up0" || n.Gateway != "10.77.0.1") {
				err = fmt.Errorf("created %+v", n)
			}
			return err
		})
		if master, up := u.link(t, h, "up0"); master != "lab" || !up {
			t.Errorf("%s: up0 has master %q, up %v; want lab, up", h, master, up)
		}
	}
	// Another network cannot take an uplink in use.
	err := u.on("ha", func(ctx context.Context, m *network.Manager) error {
		_, err := m.Create(ctx, network.Config{Name: "lab2", Subnet: "10.78.0.0/24", Uplink: "up0"})
		return err
	})
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second network on up0: %v, want conflict", err)
	}
}

func (u *uplinkTest) acrossHosts(t *testing.T) {
	la := u.plug(t, "ha", "ia", "ia", network.AttachOptions{})
	lb := u.plug(t, "hb", "ib", "ib", network.AttachOptions{MAC: "00:16:3e:77:00:0b", IPv4: "10.77.0.11"})
	// Each host's dnsmasq answers its own instance; DHCP does not cross the uplinks.
	for inst, want := range map[string]string{"ia": la.IPv4.String(), "ib": "10.77.0.11"} {
		got, err := u.DHCP(inst)
		if err != nil || got != want+" 10.77.0.1 10.77.0.1 tandem" {
			t.Fatalf("%s: DHCP %q, %v; want %s from its own host", inst, got, err, want)
		}
	}
	// Instance to instance across hosts (ha with NAT: a masqueraded request would be answered to
	// hb's own gateway, and the ping would fail), each to its own gateway, the on-link client to both.
	u.ping(t, "ia", "10.77.0.11")
	u.ping(t, "ib", la.IPv4.String())
	u.ping(t, "ia", "10.77.0.1")
	u.ping(t, "ib", "10.77.0.1")
	u.ping(t, "cl", la.IPv4.String())
	u.ping(t, "cl", "10.77.0.11")
	// The gateway is each host's own: the segment does not get it.
	if err := u.Ping("cl", "10.77.0.1"); err == nil {
		t.Errorf("the on-link client reached a gateway over the uplink")
	}
	gwMAC := strings.TrimSpace(u.Sh(t, "ip", "-n", u.NS("ha"), "-br", "link", "show", "dev", "lab"))
	gwMAC = strings.Fields(gwMAC)[2]
	if p := u.switchPort(t, gwMAC); p != "" {
		t.Errorf("the switch learned the gateway MAC %s on %s: a host's own frames left by its uplink", gwMAC, p)
	}
	if pa, pb := u.switchPort(t, la.MAC), u.switchPort(t, lb.MAC); pa != "lab-ha" || pb != "lab-hb" {
		t.Errorf("switch ports: ia on %q, ib on %q; want lab-ha, lab-hb", pa, pb)
	}
}

// move does what a live migration does to the network: the source drops the NIC, the destination
// takes over its MAC and address (Attach with both), plugs it and the restore puts the address
// back; the switch still points at the source until the announcement.
func (u *uplinkTest) move(t *testing.T) {
	la := u.leases["ia"]
	u.must(t, "ha", func(ctx context.Context, m *network.Manager) error { return m.Detach(ctx, "lab", "ia", "eth0") })
	l := u.plug(t, "hb", "ia", "ia2", network.AttachOptions{MAC: la.MAC, IPv4: la.IPv4.String()})
	if l.MAC != la.MAC || l.IPv4 != la.IPv4 {
		t.Fatalf("lease on hb %+v, want ia's %s %s", l, la.MAC, la.IPv4)
	}
	u.Sh(t, "ip", "-n", u.NS("ia2"), "addr", "add", la.CIDR(), "dev", "eth0")
	u.Sh(t, "ip", "-n", u.NS("ia2"), "route", "add", "default", "via", "10.77.0.1")
	if p := u.switchPort(t, la.MAC); p != "lab-ha" {
		t.Errorf("before the announcement the switch has ia on %q, want the stale lab-ha", p)
	}
	n, err := network.Announce(u.NSPath("ia2"), network.AnnounceRounds, network.AnnounceInterval)
	if err != nil || n != 1 {
		t.Fatalf("announce: %d addresses, %v", n, err)
	}
	if p := u.switchPort(t, la.MAC); p != "lab-hb" {
		t.Fatalf("after the announcement the switch has ia on %q, want lab-hb", p)
	}
	u.ping(t, "cl", la.IPv4.String())
	u.ping(t, "ia2", "10.77.0.1")
	u.ping(t, "ib", la.IPv4.String())
}

// moveVM moves ib to ha the way a VM moves: QEMU's self-announce is a RARP frame from the NIC's
// MAC, which the port's anti-spoofing chain lets through to the uplink.
func (u *uplinkTest) moveVM(t *testing.T) {
	lb := u.leases["ib"]
	u.must(t, "hb", func(ctx context.Context, m *network.Manager) error { return m.Detach(ctx, "lab", "ib", "eth0") })
	u.plug(t, "ha", "ib", "ib2", network.AttachOptions{MAC: lb.MAC, IPv4: lb.IPv4.String()})
	u.Sh(t, "ip", "-n", u.NS("ib2"), "addr", "add", lb.CIDR(), "dev", "eth0")
	if p := u.switchPort(t, lb.MAC); p != "lab-hb" {
		t.Errorf("before the announcement the switch has ib on %q, want the stale lab-hb", p)
	}
	mac, _ := net.ParseMAC(lb.MAC)
	rarp := append(append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, mac...), 0x80, 0x35, // Ethernet, RARP
		0, 1, 8, 0, 6, 4, 0, 3) // Ethernet/IPv4, "reverse request", as QEMU's announce_self_create
	rarp = append(append(append(append(rarp, mac...), 0, 0, 0, 0), mac...), 0, 0, 0, 0)
	if err := network.InNetns(u.NSPath("ib2"), func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, rarp, 0, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6})
	}); err != nil {
		t.Fatal(err)
	}
	if p := u.switchPort(t, lb.MAC); p != "lab-ha" {
		t.Fatalf("after QEMU's RARP the switch has ib on %q, want lab-ha", p)
	}
	u.ping(t, "cl", lb.IPv4.String())
}

// recover: ha "reboots" (bridge, rules and dnsmasq gone; up0 free): Recover enslaves up0 again and
// a new instance there reaches the others. An uplink gone for good does not fail Recover.
func (u *uplinkTest) recover(t *testing.T) {
	pid, _ := os.ReadFile(filepath.Join(u.opts("ha").RunDir, "dnsmasq-lab.pid"))
	var p int
	if fmt.Sscan(string(pid), &p); p > 0 {
		syscall.Kill(p, syscall.SIGKILL)
	}
	u.Sh(t, "ip", "-n", u.NS("ha"), "link", "del", "lab")
	u.Sh(t, "ip", "netns", "exec", u.NS("ha"), "nft", "delete table bridge tandem-lab; delete table ip tandem-lab")
	u.newManager(t, "ha")
	u.must(t, "ha", func(ctx context.Context, m *network.Manager) error { return m.Recover(ctx) })
	if master, up := u.link(t, "ha", "up0"); master != "lab" || !up {
		t.Fatalf("after recover: up0 has master %q, up %v", master, up)
	}
	lc := u.plug(t, "ha", "ic", "ic", network.AttachOptions{IPv4: "10.77.0.20"})
	if got, err := u.DHCP("ic"); err != nil || !strings.HasPrefix(got, "10.77.0.20 ") {
		t.Fatalf("ic: DHCP %q, %v", got, err)
	}
	u.ping(t, "ic", u.leases["ia"].IPv4.String()) // on hb since the move
	u.ping(t, "cl", lc.IPv4.String())

	u.Sh(t, "ip", "-n", u.NS("ha"), "link", "del", "up0") // the lab NIC is gone
	u.newManager(t, "ha")
	u.must(t, "ha", func(ctx context.Context, m *network.Manager) error { return m.Recover(ctx) })
	u.ping(t, "ic", "10.77.0.1") // host-local still
}

func (u *uplinkTest) delete(t *testing.T) {
	for host, insts := range map[string][]string{"ha": {"ic", "ib"}, "hb": {"ia"}} {
		u.must(t, host, func(ctx context.Context, m *network.Manager) error {
			for _, inst := range insts {
				if err := m.Detach(ctx, "lab", inst, "eth0"); err != nil {
					return err
				}
			}
			return m.Delete(ctx, "lab")
		})
		if tables := u.Sh(t, "ip", "netns", "exec", u.NS(host), "nft", "list", "tables"); strings.Contains(tables, "tandem-lab") {
			t.Errorf("%s: tables left: %s", host, tables)
		}
	}
	// The uplink is released and stays up; the bridge is gone.
	if master, up := u.link(t, "hb", "up0"); master != "" || !up {
		t.Errorf("hb after delete: up0 has master %q, up %v; want none, up", master, up)
	}
	if _, err := u.Try("ip", "-n", u.NS("hb"), "link", "show", "dev", "lab"); err == nil {
		t.Errorf("hb: bridge lab left")
	}
}
