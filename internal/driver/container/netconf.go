package container

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
)

// runc 1.1 always checkpoints and restores a container's network namespace as "empty" (its CLI
// sets CLONE_NEWNET in CRIU's empty_ns mask: "runc doesn't manage network devices"). CRIU then
// writes no netdev/ifaddr/route images and restores into a bare namespace, where a TCP socket
// cannot be reconnected ("Network is unreachable"). So the driver records the namespace's
// interfaces, addresses and routes itself at the checkpoint (netConf, in the image directory) and
// puts them back during the restore, after PrepareNetwork has plugged the interfaces in again and
// before CRIU restores the sockets (see nethook.go).

// netConf is what a container's network namespace held at a checkpoint.
type netConf struct {
	Links  []netLink  `json:"links,omitempty"`
	Routes []netRoute `json:"routes,omitempty"`
}

// netLink is one interface other than lo.
type netLink struct {
	Name  string   `json:"name"`
	MAC   string   `json:"mac,omitempty"`
	MTU   int      `json:"mtu,omitempty"`
	Up    bool     `json:"up"`
	Addrs []string `json:"addrs,omitempty"` // CIDR; IPv6 link-local ones are left to the kernel
	Brd   []string `json:"brd,omitempty"`   // IPv4 broadcast per address ("" for none)
}

// netRoute is a route the kernel does not make by itself from an address.
type netRoute struct {
	IPv6   bool   `json:"ipv6,omitempty"`
	Dst    string `json:"dst"`
	Via    string `json:"via,omitempty"`
	Dev    string `json:"dev,omitempty"`
	Src    string `json:"src,omitempty"`
	Proto  string `json:"proto,omitempty"`
	Scope  string `json:"scope,omitempty"`
	Metric int    `json:"metric,omitempty"`
	Onlink bool   `json:"onlink,omitempty"`
}

// ipIn runs ip(8) in the network namespace at netns.
func ipIn(ctx context.Context, netns string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "ip"}, args...)...)
	cmd.Env = shimEnv()
	out, err := cmd.Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			msg = strings.TrimSpace(string(ee.Stderr))
		}
		return out, fmt.Errorf("ip %s: %s", strings.Join(args, " "), msg)
	}
	return out, nil
}

// snapshotNet reads the interfaces, addresses and routes of the network namespace at netns.
func snapshotNet(ctx context.Context, netns string) (*netConf, error) {
	out, err := ipIn(ctx, netns, "-json", "addr", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Name  string   `json:"ifname"`
		Flags []string `json:"flags"`
		MTU   int      `json:"mtu"`
		Type  string   `json:"link_type"`
		MAC   string   `json:"address"`
		Addrs []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
			Broadcast string `json:"broadcast"`
			Scope     string `json:"scope"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("ip -json addr: %w", err)
	}
	conf := &netConf{}
	for _, l := range links {
		if l.Type == "loopback" {
			continue
		}
		nl := netLink{Name: l.Name, MAC: l.MAC, MTU: l.MTU, Up: slices.Contains(l.Flags, "UP")}
		for _, a := range l.Addrs {
			if a.Family == "inet6" && a.Scope == "link" {
				continue
			}
			nl.Addrs = append(nl.Addrs, a.Local+"/"+strconv.Itoa(a.Prefixlen))
			nl.Brd = append(nl.Brd, a.Broadcast)
		}
		conf.Links = append(conf.Links, nl)
	}
	for _, family := range []string{"-4", "-6"} {
		out, err := ipIn(ctx, netns, family, "-json", "route", "show", "table", "main")
		if err != nil {
			return nil, err
		}
		var routes []struct {
			Dst      string   `json:"dst"`
			Gateway  string   `json:"gateway"`
			Dev      string   `json:"dev"`
			Protocol string   `json:"protocol"`
			Scope    string   `json:"scope"`
			Prefsrc  string   `json:"prefsrc"`
			Metric   int      `json:"metric"`
			Flags    []string `json:"flags"`
		}
		if err := json.Unmarshal(out, &routes); err != nil {
			return nil, fmt.Errorf("ip -json route: %w", err)
		}
		for _, r := range routes {
			if r.Protocol == "kernel" || r.Dev == "lo" || strings.HasPrefix(r.Dst, "fe80:") || strings.HasPrefix(r.Dst, "ff00:") {
				continue // made again by the kernel from the addresses
			}
			conf.Routes = append(conf.Routes, netRoute{IPv6: family == "-6", Dst: r.Dst, Via: r.Gateway, Dev: r.Dev,
				Src: r.Prefsrc, Proto: r.Protocol, Scope: r.Scope, Metric: r.Metric, Onlink: slices.Contains(r.Flags, "onlink")})
		}
	}
	return conf, nil
}

// applyNet puts conf back into the network namespace at netns, whose interfaces PrepareNetwork
// has plugged in again (same names). It is idempotent: what PrepareNetwork already set is kept.
func applyNet(ctx context.Context, netns string, conf *netConf) error {
	if conf == nil {
		return nil
	}
	for _, l := range conf.Links {
		if _, err := ipIn(ctx, netns, "link", "show", "dev", l.Name); err != nil {
			return fmt.Errorf("interface %s of the checkpoint is missing after PrepareNetwork: %w", l.Name, err)
		}
		args := []string{"link", "set", "dev", l.Name}
		if l.MAC != "" {
			args = append(args, "address", l.MAC)
		}
		if l.MTU > 0 {
			args = append(args, "mtu", strconv.Itoa(l.MTU))
		}
		if l.Up {
			args = append(args, "up")
		}
		if _, err := ipIn(ctx, netns, args...); err != nil {
			return err
		}
		for i, a := range l.Addrs {
			args := []string{"addr", "replace", a, "dev", l.Name}
			if i < len(l.Brd) && l.Brd[i] != "" {
				args = append(args, "broadcast", l.Brd[i])
			}
			if strings.Contains(a, ":") {
				args = append(args, "nodad") // usable at once: the sockets are restored next
			}
			if _, err := ipIn(ctx, netns, args...); err != nil {
				return err
			}
		}
	}
	for _, r := range conf.Routes {
		args := []string{"-4", "route", "replace", r.Dst}
		if r.IPv6 {
			args[0] = "-6"
		}
		for _, kv := range [][2]string{{"via", r.Via}, {"dev", r.Dev}, {"src", r.Src}, {"proto", r.Proto}, {"scope", r.Scope}} {
			if kv[1] != "" {
				args = append(args, kv[0], kv[1])
			}
		}
		if r.Metric > 0 {
			args = append(args, "metric", strconv.Itoa(r.Metric))
		}
		if r.Onlink {
			args = append(args, "onlink")
		}
		if _, err := ipIn(ctx, netns, args...); err != nil {
			return err
		}
	}
	return nil
}
