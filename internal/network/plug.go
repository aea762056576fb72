package network

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"regexp"

	"tandem/internal/errdefs"
)

var ifNameRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,14}$`)

// HostIfName derives the host-side interface name of a NIC: the prefix and a hash of instance and
// NIC, 15 characters in all. It is stable, so a re-plug after a restart finds the old interface.
func (m *Manager) HostIfName(instance, nic string) string {
	sum := sha256.Sum256([]byte(attachKey(instance, nic)))
	return m.opts.Prefix + hex.EncodeToString(sum[:])[:ifNameMax-len(m.opts.Prefix)]
}

// PlugVeth creates a veth pair for a container's NIC: the inside end, named ifName (default eth0)
// with the lease's MAC, in the network namespace at netnsPath (made by the container driver); the
// host end, hostIfName (default HostIfName), on the network's bridge. The anti-spoofing rules for
// the host end exist before it joins the bridge. Works on a running container (hotplug).
func (m *Manager) PlugVeth(ctx context.Context, network string, lease Lease, netnsPath, ifName, hostIfName string) error {
	if ifName == "" {
		ifName = "eth0"
	}
	if err := CheckInterfaceName(ifName); err != nil {
		return errdefs.Invalid("interface name %v", err)
	}
	if _, err := os.Stat(netnsPath); err != nil {
		return errdefs.Invalid("network namespace %q: %v", netnsPath, err)
	}
	return m.plug(ctx, network, lease, hostIfName, "veth", func(hostIf string) error {
		if _, err := run(ctx, "", "ip", "link", "add", "name", hostIf, "type", "veth",
			"peer", "name", ifName, "address", lease.MAC, "netns", netnsPath); err != nil {
			return fmt.Errorf("create veth: %w", err)
		}
		// The peer cannot be brought up by the same `ip link add`, so do it from inside.
		if _, err := run(ctx, "", "nsenter", "--net="+netnsPath, "ip", "link", "set", "dev", ifName, "up"); err != nil {
			return fmt.Errorf("bring %s up in %s: %w", ifName, netnsPath, err)
		}
		return nil
	})
}

// PlugTap creates a tap for a VM's NIC on the network's bridge, owned by Options.TapUser (else root), single queue; QEMU
// opens it with -netdev tap,ifname=NAME,script=no,downscript=no and gives the guest the lease's MAC.
// A tap that already exists is kept (QEMU may hold it open), only re-attached.
func (m *Manager) PlugTap(ctx context.Context, network string, lease Lease, tapName string) error {
	return m.plug(ctx, network, lease, tapName, "tap", func(hostIf string) error {
		args := []string{"ip", "tuntap", "add", "dev", hostIf, "mode", "tap"}
		if m.opts.TapUser != "" {
			args = append(args, "user", m.opts.TapUser)
		}
		_, err := run(ctx, "", args[0], args[1:]...)
		if err != nil {
			return fmt.Errorf("create tap: %w", err)
		}
		return nil
	})
}

// plug is the part PlugVeth and PlugTap share: record the port and its rules, make the interface
// (create), limit it, put it on the bridge; undo all of it on failure.
func (m *Manager) plug(ctx context.Context, network string, lease Lease, hostIf, kind string, create func(string) error) (err error) {
	if hostIf == "" {
		hostIf = m.HostIfName(lease.Instance, lease.NIC)
	}
	if !ifNameRE.MatchString(hostIf) {
		return errdefs.Invalid("host interface name %q is not a valid Linux interface name", hostIf)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s, a, err := m.lookup(network, lease.Instance, lease.NIC)
	if err != nil {
		return err
	}
	if a.MAC != lease.MAC || a.IPv4 != lease.IPv4 {
		return errdefs.Conflict("lease of NIC %s of %s is stale: the network now has %s %s", lease.NIC, lease.Instance, a.MAC, a.IPv4)
	}
	for _, o := range m.nets {
		if o.Uplink == hostIf { // it may be a veth, which the leftover clean-up below would delete
			return errdefs.Conflict("interface %q is the uplink of network %q", hostIf, o.Name)
		}
	}
	for _, o := range s.Attachments {
		if o != a && o.HostIf == hostIf {
			return errdefs.Conflict("interface %q is already %s/%s's", hostIf, o.Instance, o.NIC)
		}
	}
	existing, err := getLink(ctx, hostIf)
	if err != nil {
		return err
	}
	reuse := false
	switch {
	case existing == nil:
	case kind == "tap" && existing.LinkInfo.Kind == "tun":
		reuse = true
	case existing.LinkInfo.Kind == "veth" || existing.LinkInfo.Kind == "tun":
		// A leftover of an earlier plug of this NIC (its name is this NIC's): replace it.
		if err := deleteLink(ctx, hostIf); err != nil {
			return err
		}
	default:
		return errdefs.Conflict("interface %q exists and is not tandem's (a %q)", hostIf, existing.LinkInfo.Kind)
	}
	if a.HostIf != "" && a.HostIf != hostIf {
		// Plugged before under another name: that interface is stale now.
		if err := deleteLink(ctx, a.HostIf); err != nil {
			return err
		}
	}

	ns := s.clone()
	na := ns.Attachments[attachKey(a.Instance, a.NIC)]
	na.HostIf, na.Kind = hostIf, kind
	if err := m.commit(ctx, s, ns); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if uerr := m.unplugLocked(context.WithoutCancel(ctx), network, na); uerr != nil {
				slog.Error("network: undo a failed plug", "network", network, "interface", hostIf, "err", uerr)
			}
		}
	}()
	if !reuse {
		if err := create(hostIf); err != nil {
			return err
		}
	}
	if err := m.applyLimits(ctx, hostIf, na.Ingress, na.Egress); err != nil {
		return err
	}
	if _, err := run(ctx, "", "ip", "link", "set", "dev", hostIf, "master", network, "up"); err != nil {
		return fmt.Errorf("attach %s to bridge %s: %w", hostIf, network, err)
	}
	return nil
}

// Unplug removes a NIC's host-side interface (a veth's inside end goes with it) and its rules. The
// NIC keeps its address: Detach releases that. Unplugging an unplugged NIC is not an error.
func (m *Manager) Unplug(ctx context.Context, network, instance, nic string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.nets[network]
	if !ok {
		return errdefs.NotFound("network %q not found", network)
	}
	if a := s.Attachments[attachKey(instance, nic)]; a != nil {
		return m.unplugLocked(ctx, network, a)
	}
	return nil
}

func (m *Manager) unplugLocked(ctx context.Context, network string, a *attachment) error {
	if a.HostIf == "" {
		return nil
	}
	// Interface first, rules second: the port never sits on the bridge without its rules.
	if err := deleteLink(ctx, a.HostIf); err != nil {
		slog.Warn("network: unplug", "interface", a.HostIf, "err", err)
		return err
	}
	if err := m.clearLimits(ctx, a.HostIf, false, true); err != nil { // the ifb, if any
		return err
	}
	s := m.nets[network]
	ns := s.clone()
	na := ns.Attachments[attachKey(a.Instance, a.NIC)]
	na.HostIf, na.Kind = "", ""
	return m.commit(ctx, s, ns)
}
