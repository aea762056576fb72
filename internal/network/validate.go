package network

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"tandem/internal/errdefs"
)

// ifNameMax is IFNAMSIZ (16) minus the NUL: the longest Linux interface name.
const ifNameMax = 15

// Subnet sizes tandem accepts: a /29 leaves 5 instance addresses; beyond a /16 dnsmasq's static
// tables and the broadcast domain get unreasonable.
const (
	minPrefixBits = 16
	maxPrefixBits = 29
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// reservedIfNames are names Linux keeps for itself: /proc/sys/net/ipv{4,6}/conf/{all,default}
// and the bonding driver's control file beside the interfaces in /sys/class/net.
var reservedIfNames = map[string]bool{"all": true, "default": true, "bonding_masters": true}

// ValidateName checks a network name. The name is also the bridge's interface name, so on top of
// the instance-name rules (1-63 of a-z, 0-9, '-', not starting with '-') it must fit IFNAMSIZ.
func ValidateName(name string) error {
	shown := strconv.Quote(name)
	if len(shown) > 80 {
		shown = shown[:80] + "..."
	}
	switch {
	case name == "":
		return errdefs.Invalid("network name is empty")
	case reservedIfNames[name]:
		return errdefs.Invalid("network name %s is reserved by Linux (it names the bridge interface); choose another", shown)
	case nameRE.MatchString(name) && len(name) <= ifNameMax:
		return nil
	case len(name) > 63:
		return errdefs.Invalid("network name %s is %d characters long; the limit is 63", shown, len(name))
	case strings.HasPrefix(name, "-"):
		return errdefs.Invalid("network name %s must not start with '-'", shown)
	case nameRE.MatchString(name):
		return errdefs.Invalid("network name %s is %d characters long: it names the bridge interface, and Linux interface names are at most %d characters",
			shown, len(name), ifNameMax)
	default:
		return errdefs.Invalid("network name %s may only contain a-z, 0-9 and '-'", shown)
	}
}

// CheckInterfaceName checks the name a NIC gets inside an instance: a Linux interface name that
// Linux does not keep for itself.
func CheckInterfaceName(name string) error {
	switch {
	case !ifNameRE.MatchString(name):
		return fmt.Errorf("%q: want a Linux interface name, 1-15 of letters, digits, '.', '_' and '-', not starting with '.' or '-'", name)
	case name == "lo":
		return fmt.Errorf("%q is the loopback interface", name)
	case reservedIfNames[name]:
		return fmt.Errorf("%q is reserved by Linux", name)
	}
	return nil
}

// special IPv4 ranges no tandem subnet may use.
var reservedRanges = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "the \"this network\" range 0.0.0.0/8"},
	{netip.MustParsePrefix("127.0.0.0/8"), "the loopback range 127.0.0.0/8"},
	{netip.MustParsePrefix("169.254.0.0/16"), "the link-local range 169.254.0.0/16"},
	{netip.MustParsePrefix("224.0.0.0/3"), "the multicast and reserved range 224.0.0.0/3"},
}

// ParseSubnet checks a subnet given by an operator: an IPv4 network address with a prefix between
// /16 and /29, host bits clear, outside special ranges.
func ParseSubnet(cidr string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
	if err != nil {
		return netip.Prefix{}, errdefs.Invalid("subnet %q is not a CIDR like 10.1.2.0/24", cidr)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, errdefs.Invalid("subnet %q: only IPv4 subnets are supported", cidr)
	}
	if p.Bits() > maxPrefixBits {
		return netip.Prefix{}, errdefs.Invalid("subnet %q is too small: the smallest is a /%d (5 instance addresses)", cidr, maxPrefixBits)
	}
	if p.Bits() < minPrefixBits {
		return netip.Prefix{}, errdefs.Invalid("subnet %q is too large: the largest is a /%d", cidr, minPrefixBits)
	}
	if p.Masked() != p {
		return netip.Prefix{}, errdefs.Invalid("subnet %q has host bits set; did you mean %s?", cidr, p.Masked())
	}
	for _, r := range reservedRanges {
		if r.p.Overlaps(p) {
			return netip.Prefix{}, errdefs.Invalid("subnet %s lies in %s", p, r.what)
		}
	}
	return p, nil
}

var domainLabelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// validateDomain checks the DNS domain instance names resolve in.
func validateDomain(d string) error {
	if len(d) > 253 {
		return errdefs.Invalid("DNS domain %q is longer than 253 characters", d)
	}
	for _, label := range strings.Split(d, ".") {
		if !domainLabelRE.MatchString(label) {
			return errdefs.Invalid("DNS domain %q: each label must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'", d)
		}
	}
	return nil
}

// validHostname says whether an instance name can be a DNS label (instance names may end in '-').
func validHostname(name string) bool { return domainLabelRE.MatchString(name) }

var rateRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)$`)

var rateUnits = map[string]float64{
	"": 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
}

// ParseRate reads a NIC rate limit as written in limits.ingress/limits.egress ("10Mbit", "1.5Gbit",
// "500kbit"; a bare number is bit/s) and returns bits per second. "" means no limit (0).
func ParseRate(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	m := rateRE.FindStringSubmatch(s)
	if m == nil {
		return 0, errdefs.Invalid("rate %q is not like 10Mbit (units: bit, kbit, Mbit, Gbit, Tbit)", s)
	}
	mult, ok := rateUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, errdefs.Invalid("rate %q: unknown unit %q (units: bit, kbit, Mbit, Gbit, Tbit)", s, m[2])
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, errdefs.Invalid("rate %q: %v", s, err)
	}
	bits := f * mult
	if bits < 8000 || bits > 1e13 {
		return 0, errdefs.Invalid("rate %q is out of range 8kbit-10Tbit", s)
	}
	return uint64(bits), nil
}

// subnetConflict explains why p cannot be used next to the other tandem networks and the host's
// routes, or returns "" when it can.
func subnetConflict(p netip.Prefix, others map[string]netip.Prefix, routes []hostRoute) string {
	for name, o := range others {
		if o.Overlaps(p) {
			return fmt.Sprintf("subnet %s overlaps %s of network %q", p, o, name)
		}
	}
	for _, r := range routes {
		if r.Prefix.Overlaps(p) {
			return fmt.Sprintf("subnet %s overlaps the host route %s (dev %s)", p, r.Prefix, r.Dev)
		}
	}
	return ""
}

// pickSubnet chooses a free 10.x.y.0/24 at random (so hosts and namespaces rarely pick the same one).
// intn is rand.IntN, injected for tests.
func pickSubnet(others map[string]netip.Prefix, routes []hostRoute, intn func(int) int) (netip.Prefix, error) {
	for range 2048 {
		n := intn(1 << 16)
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n >> 8), byte(n), 0}), 24)
		if subnetConflict(p, others, routes) == "" {
			return p, nil
		}
	}
	return netip.Prefix{}, errdefs.Conflict("no free 10.x.y.0/24 subnet found; give one with a subnet")
}
