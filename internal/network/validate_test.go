package network

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"tandem/internal/errdefs"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"tandem0", "a", "net-1", "0abc", "fifteen-chars-x"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for name, want := range map[string]string{
		"":                      "empty",
		"-net":                  "must not start with '-'",
		"Net":                   "may only contain",
		"net_1":                 "may only contain",
		"a/b":                   "may only contain",
		"sixteen-chars-xy":      "Linux interface names are at most 15",
		strings.Repeat("a", 64): "the limit is 63",
		"default":               "reserved",
		"all":                   "reserved",
	} {
		err := ValidateName(name)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want invalid with %q", name, err, want)
		}
	}
}

func TestCheckInterfaceName(t *testing.T) {
	for _, ok := range []string{"eth0", "eth1", "net_1", "a.b", "fifteen-chars-x"} {
		if err := CheckInterfaceName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for name, want := range map[string]string{
		"lo": "loopback", "all": "reserved", "default": "reserved", "bonding_masters": "reserved",
		"": "1-15", ".": "1-15", "..": "1-15", "sixteen-chars-xy": "1-15", "a/b": "1-15", "a:b": "1-15", "a b": "1-15",
	} {
		if err := CheckInterfaceName(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want one with %q", name, err, want)
		}
	}
}

func TestParseSubnet(t *testing.T) {
	for _, ok := range []string{"10.1.2.0/24", "192.168.0.0/16", "172.16.5.8/29", " 10.0.0.0/20 "} {
		if _, err := ParseSubnet(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for cidr, want := range map[string]string{
		"10.1.2.0":       "not a CIDR",
		"10.1.2.0/33":    "not a CIDR",
		"banana":         "not a CIDR",
		"fd00::/64":      "only IPv4",
		"10.1.2.0/30":    "too small",
		"10.0.0.0/8":     "too large",
		"10.1.2.5/24":    "did you mean 10.1.2.0/24",
		"127.0.1.0/24":   "loopback",
		"169.254.1.0/24": "link-local",
		"224.1.0.0/24":   "multicast",
		"0.0.1.0/24":     "this network",
	} {
		_, err := ParseSubnet(cidr)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want invalid with %q", cidr, err, want)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{
		"": 0, "10Mbit": 10e6, "10mbit": 10e6, "1.5Gbit": 1.5e9, "500kbit": 500e3, "64000": 64000,
	} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("%q: %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "10MB", "10 parsecs", "-1Mbit", "1bit", "100Tbit"} {
		if _, err := ParseRate(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%q: err = %v, want invalid", bad, err)
		}
	}
}

func TestValidateDomain(t *testing.T) {
	for _, ok := range []string{"tandem", "lab.example.org", "a-b.c1"} {
		if err := validateDomain(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "a..b", "A.b", "a_b", "a/b"} {
		if err := validateDomain(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseRouteDst(t *testing.T) {
	for in, want := range map[string]string{"10.0.0.0/24": "10.0.0.0/24", "10.0.0.1": "10.0.0.1/32", "127.0.0.0/8": "127.0.0.0/8"} {
		if p, ok := parseRouteDst(in); !ok || p.String() != want {
			t.Errorf("%q: %v %v, want %s", in, p, ok, want)
		}
	}
	for _, skip := range []string{"", "default", "fe80::/64"} {
		if _, ok := parseRouteDst(skip); ok {
			t.Errorf("%q not skipped", skip)
		}
	}
}

func TestSubnetConflictAndPick(t *testing.T) {
	others := map[string]netip.Prefix{"net1": netip.MustParsePrefix("10.1.0.0/16")}
	routes := []hostRoute{{netip.MustParsePrefix("10.2.3.0/24"), "eth0"}}
	for cidr, want := range map[string]string{
		"10.1.5.0/24": `overlaps 10.1.0.0/16 of network "net1"`,
		"10.2.3.0/25": "overlaps the host route 10.2.3.0/24 (dev eth0)",
		"10.2.0.0/16": "overlaps the host route",
		"10.3.0.0/24": "",
	} {
		if got := subnetConflict(netip.MustParsePrefix(cidr), others, routes); !strings.Contains(got, want) || (want == "") != (got == "") {
			t.Errorf("%s: %q, want %q", cidr, got, want)
		}
	}
	// The picker skips taken candidates: feed it net1's, the route's, then a free one.
	seq := []int{1<<8 | 7, 2<<8 | 3, 9<<8 | 9}
	p, err := pickSubnet(others, routes, func(int) int { v := seq[0]; seq = seq[1:]; return v })
	if err != nil || p.String() != "10.9.9.0/24" {
		t.Fatalf("picked %v, %v; want 10.9.9.0/24", p, err)
	}
	all := []hostRoute{{netip.MustParsePrefix("10.0.0.0/8"), "eth0"}}
	if _, err := pickSubnet(nil, all, func(n int) int { return 5 }); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("no free subnet: %v", err)
	}
}

// Create refuses bad input before it touches anything on the host.
func TestCreateRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	m, dir := seedManager(t, testState(t, "10.1.2.0/24"))
	for _, c := range []struct {
		cfg  Config
		kind error
		want string
	}{
		{Config{Name: "much-too-long-name"}, errdefs.ErrInvalidArgument, "at most 15"},
		{Config{Name: "Bad"}, errdefs.ErrInvalidArgument, "may only contain"},
		{Config{Name: "n2", Subnet: "10.1.2.0/25"}, errdefs.ErrInvalidArgument, `overlaps 10.1.2.0/24 of network "net1"`},
		{Config{Name: "n2", Subnet: "10.1.2.0/33"}, errdefs.ErrInvalidArgument, "not a CIDR"},
		{Config{Name: "n2", Subnet: "10.7.0.0/30"}, errdefs.ErrInvalidArgument, "too small"},
		{Config{Name: "n2", DNSDomain: "bad_domain"}, errdefs.ErrInvalidArgument, "DNS domain"},
		{Config{Name: "net1"}, errdefs.ErrAlreadyExists, "already exists"},
		{Config{Name: "lo"}, errdefs.ErrAlreadyExists, "interface named"},
	} {
		_, err := m.Create(ctx, c.cfg)
		if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err = %v, want %v with %q", c.cfg, err, c.kind, c.want)
		}
	}
	entries := recordDirs(dir)
	if len(entries) != 1 || len(m.List(ctx)) != 1 {
		t.Fatalf("a refused create left something: %v", entries)
	}
}

// recordDirs lists dir but the owner lock every Manager keeps there.
func recordDirs(dir string) []os.DirEntry {
	entries, _ := os.ReadDir(dir)
	var out []os.DirEntry
	for _, e := range entries {
		if e.Name() != ownerLock {
			out = append(out, e)
		}
	}
	return out
}
