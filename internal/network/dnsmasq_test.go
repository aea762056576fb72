package network

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDnsmasqConfig(t *testing.T) {
	s := portState()
	f := newDnsmasqFiles("/d/networks/net1", "/run/t", "net1")
	want := `# tandem network net1: generated; tandem rewrites it
interface=net1
except-interface=lo
bind-interfaces
user=root
pid-file=/run/t/dnsmasq-net1.pid
log-facility=/d/networks/net1/dnsmasq.log
quiet-dhcp
no-hosts
domain-needed
domain=tandem
local=/tandem/
expand-hosts
addn-hosts=/d/networks/net1/hosts
dhcp-range=10.1.2.0,static,255.255.255.0,1h
dhcp-hostsfile=/d/networks/net1/dhcp-hosts
dhcp-ignore=tag:!known
dhcp-leasefile=/d/networks/net1/dnsmasq.leases
dhcp-authoritative
dhcp-option=option:router,10.1.2.1
dhcp-option=option:dns-server,10.1.2.1
dhcp-option=option:domain-search,tandem
`
	if got := dnsmasqConfig(s, f, "root"); got != want {
		t.Fatalf("config:\n%s\nwant:\n%s", got, want)
	}
	s.Subnet = netip.MustParsePrefix("172.16.0.0/20")
	if got := dnsmasqConfig(s, f, "nobody"); !contains(got, "dhcp-range=172.16.0.0,static,255.255.240.0,1h\n", "user=nobody\n", "option:router,172.16.0.1\n") {
		t.Fatalf("/20 config:\n%s", got)
	}
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func TestHostsFiles(t *testing.T) {
	s := portState()
	// A second NIC of c1 on the same network gets a lease but not the name; a name that is not a
	// DNS label gets no name at all.
	s.Attachments["c1/eth1"] = &attachment{Instance: "c1", NIC: "eth1", MAC: "00:16:3e:00:00:04", IPv4: netip.MustParseAddr("10.1.2.9")}
	s.Attachments["odd-/eth0"] = &attachment{Instance: "odd-", NIC: "eth0", MAC: "00:16:3e:00:00:05", IPv4: netip.MustParseAddr("10.1.2.10")}
	wantDHCP := `00:16:3e:00:00:01,10.1.2.2,c1
00:16:3e:00:00:04,10.1.2.9
00:16:3e:00:00:05,10.1.2.10
00:16:3e:00:00:02,10.1.2.3,v1
00:16:3e:00:00:03,10.1.2.4,x1
`
	if got := dhcpHosts(s); got != wantDHCP {
		t.Fatalf("dhcp-hosts:\n%s\nwant:\n%s", got, wantDHCP)
	}
	wantHosts := `10.1.2.2 c1.tandem c1
10.1.2.3 v1.tandem v1
10.1.2.4 x1.tandem x1
`
	if got := addnHosts(s); got != wantHosts {
		t.Fatalf("hosts:\n%s\nwant:\n%s", got, wantHosts)
	}
}

func TestWriteIfChanged(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	for i, c := range []struct {
		data string
		want bool
	}{{"a", true}, {"a", false}, {"b", true}} {
		got, err := writeIfChanged(p, c.data)
		if err != nil || got != c.want {
			t.Fatalf("write %d: %v, %v; want %v", i, got, err, c.want)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "b" {
		t.Fatalf("content %q", b)
	}
}

func TestDnsmasqPIDIgnoresStrangers(t *testing.T) {
	f := newDnsmasqFiles(t.TempDir(), t.TempDir(), "n")
	if pid := dnsmasqPID(f); pid != 0 {
		t.Fatalf("no pidfile: %d", pid)
	}
	// pid 1 is alive but not a dnsmasq with this config: it must never be signalled.
	os.WriteFile(f.PID, []byte("1\n"), 0o644)
	if pid := dnsmasqPID(f); pid != 0 {
		t.Fatalf("pid 1 taken for our dnsmasq")
	}
	os.WriteFile(f.PID, []byte("garbage"), 0o644)
	if pid := dnsmasqPID(f); pid != 0 {
		t.Fatalf("garbage pidfile: %d", pid)
	}
}
