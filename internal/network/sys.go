package network

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"tandem/internal/hostexec"
)

// cmdTimeout bounds every helper command so a wedged ip/nft/tc cannot hang the daemon.
const cmdTimeout = 30 * time.Second

// run executes a helper command with optional stdin and returns its stdout. The error carries the
// command line and its stderr, which is where ip, nft and tc explain themselves.
func run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	c := hostexec.Command(name, args...)
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	out, err := c.Output(ctx)
	return string(out), err
}

// link is the part of `ip -j -d link` output tandem looks at.
type link struct {
	Name     string   `json:"ifname"`
	Address  string   `json:"address"`
	Master   string   `json:"master"`
	Alias    string   `json:"ifalias"`   // tandem's owner mark on its bridges (adopt.go)
	Type     string   `json:"link_type"` // "ether", "loopback", ...
	Flags    []string `json:"flags"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
	} `json:"linkinfo"`
}

// getLink returns the named interface, or nil when there is none.
func getLink(ctx context.Context, name string) (*link, error) {
	out, err := run(ctx, "", "ip", "-j", "-d", "link", "show", "dev", name)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") {
			return nil, nil
		}
		return nil, err
	}
	var links []link
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		return nil, fmt.Errorf("ip link show %s: unexpected output %q", name, out)
	}
	return &links[0], nil
}

// listLinks returns every interface of this network namespace.
func listLinks(ctx context.Context) ([]link, error) {
	out, err := run(ctx, "", "ip", "-j", "-d", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []link
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("ip link show: %v", err)
	}
	return links, nil
}

// deleteLink removes an interface; an absent one is not an error (delete is idempotent).
func deleteLink(ctx context.Context, name string) error {
	_, err := run(ctx, "", "ip", "link", "del", "dev", name)
	if err != nil && (strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "Cannot find device")) {
		return nil
	}
	return err
}

// hostRoute is an IPv4 destination the host already routes, with the device it uses.
type hostRoute struct {
	Prefix netip.Prefix
	Dev    string
}

// hostRoutes lists the host's IPv4 routes in every table (local addresses included), except default
// routes, which overlap everything. A tandem subnet must not overlap any of them.
func hostRoutes(ctx context.Context) ([]hostRoute, error) {
	out, err := run(ctx, "", "ip", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	var raw []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		return nil, fmt.Errorf("ip route show: %v", err)
	}
	var routes []hostRoute
	for _, r := range raw {
		p, ok := parseRouteDst(r.Dst)
		if ok {
			routes = append(routes, hostRoute{Prefix: p, Dev: r.Dev})
		}
	}
	return routes, nil
}

// parseRouteDst reads a route destination as ip prints it: "10.0.0.0/24", "10.0.0.1" (a /32) or
// "default" (skipped).
func parseRouteDst(dst string) (netip.Prefix, bool) {
	if dst == "" || dst == "default" {
		return netip.Prefix{}, false
	}
	if !strings.Contains(dst, "/") {
		dst += "/32"
	}
	p, err := netip.ParsePrefix(dst)
	if err != nil || !p.Addr().Is4() || p.Bits() == 0 {
		return netip.Prefix{}, false
	}
	return p.Masked(), true
}

// enableForwarding turns IPv4 forwarding on in this network namespace; NAT and routing need it.
func enableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}
