package network

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Per-NIC rate limits, applied on the host side of the veth or tap, where directions are mirrored:
//   - limits.ingress (into the instance) is what the host sends out of the host-side interface:
//     a tbf root qdisc there.
//   - limits.egress (out of the instance) arrives on the host-side interface's ingress, where
//     nothing can be queued: it is redirected (u32 match-all + mirred) to an ifb device with a tbf.
//     After the ifb the packet re-enters the host-side interface's receive path, so the bridge and
//     its anti-spoofing rules still see it with its real input interface.
//
// Shaping, not policing: this kernel has no act_police, and nft's limit keeps a full second of
// tokens on top of its burst, so it lets a second's worth of traffic through at line rate.

// ifbName derives the name of the ifb device that shapes a host-side interface's ingress.
func (m *Manager) ifbName(hostIf string) string {
	sum := sha256.Sum256([]byte("ifb/" + hostIf))
	return m.opts.Prefix + hex.EncodeToString(sum[:])[:ifNameMax-len(m.opts.Prefix)]
}

// tbfArgs is a token bucket for bits/s: a burst of 20 ms of traffic, at least 32 KiB (tbf needs at
// least rate/HZ plus an MTU), and 50 ms of queue before drops.
func tbfArgs(dev string, bits uint64) []string {
	burst := max(bits/8/50, 32<<10)
	return []string{"qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatUint(bits, 10) + "bit", "burst", strconv.FormatUint(burst, 10), "latency", "50ms"}
}

// limitCommands lists the commands that set a NIC's limits (rates already validated). A limit
// that is "" is cleared by clearLimits instead.
func limitCommands(hostIf, ifb, ingress, egress string) [][]string {
	var cmds [][]string
	if bits, _ := ParseRate(ingress); bits > 0 {
		cmds = append(cmds, append([]string{"tc"}, tbfArgs(hostIf, bits)...))
	}
	if bits, _ := ParseRate(egress); bits > 0 {
		cmds = append(cmds,
			[]string{"ip", "link", "set", "dev", ifb, "up"},
			append([]string{"tc"}, tbfArgs(ifb, bits)...),
			[]string{"tc", "qdisc", "replace", "dev", hostIf, "handle", "ffff:", "ingress"},
			[]string{"tc", "filter", "replace", "dev", hostIf, "parent", "ffff:", "protocol", "all",
				"prio", "1", "handle", "800::800", "u32", "match", "u32", "0", "0",
				"action", "mirred", "egress", "redirect", "dev", ifb},
		)
	}
	return cmds
}

// applyLimits brings a plugged NIC's shapers in line with its limits.
func (m *Manager) applyLimits(ctx context.Context, hostIf, ingress, egress string) error {
	ifb := m.ifbName(hostIf)
	if egress != "" {
		l, err := getLink(ctx, ifb)
		if err != nil {
			return err
		}
		if l == nil {
			if _, err := run(ctx, "", "ip", "link", "add", "name", ifb, "type", "ifb"); err != nil {
				return fmt.Errorf("limits.egress: %w", err)
			}
		}
	}
	for _, c := range limitCommands(hostIf, ifb, ingress, egress) {
		if _, err := run(ctx, "", c[0], c[1:]...); err != nil {
			return fmt.Errorf("NIC limits: %w", err)
		}
	}
	return m.clearLimits(ctx, hostIf, ingress == "", egress == "")
}

// clearLimits removes the shapers tandem set on a host-side interface: the root tbf (ingress),
// and the ingress qdisc with its redirect plus the ifb (egress). Absent pieces are fine.
func (m *Manager) clearLimits(ctx context.Context, hostIf string, ingress, egress bool) error {
	if ingress || egress {
		out, err := run(ctx, "", "tc", "qdisc", "show", "dev", hostIf)
		if err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			return err
		}
		// Deleting the default root qdisc is an error for tc: only remove what tandem added.
		if ingress && strings.Contains(out, "qdisc tbf") {
			if _, err := run(ctx, "", "tc", "qdisc", "del", "dev", hostIf, "root"); err != nil {
				return fmt.Errorf("clear limits.ingress: %w", err)
			}
		}
		if egress && strings.Contains(out, "qdisc ingress") {
			if _, err := run(ctx, "", "tc", "qdisc", "del", "dev", hostIf, "ingress"); err != nil {
				return fmt.Errorf("clear limits.egress: %w", err)
			}
		}
	}
	if egress {
		return deleteLink(ctx, m.ifbName(hostIf))
	}
	return nil
}
