package container

import (
	"log/slog"

	"tandem/internal/network"
)

// announce tells the L2 segment where a container restored on this host is now: gratuitous ARP
// for each of its addresses, from each of its interfaces (network.Announce), as QEMU's
// self-announce does for a migrated VM. Without it, switches keep sending the container's MAC to
// the host it left until it sends something itself, and a peer that only sends to it (an echo
// client) stalls for minutes. Harmless when nothing moved (a stateful start here). A failure is
// logged, not returned: the container runs, and its own traffic will teach the switches.
func announce(id, netns string) {
	n, err := network.Announce(netns, network.AnnounceRounds, network.AnnounceInterval)
	if err != nil {
		slog.Warn("restore: announce the container's addresses", "container", id, "err", err)
		return
	}
	slog.Debug("restore: announced the container's addresses", "container", id, "addresses", n)
}
