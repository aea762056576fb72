package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// After a move, the switches of the L2 segment (the lab bridge, an uplink's switch) still send an
// instance's MAC to the old host's port until the instance sends a frame; a peer that only sends
// to it (an echo client) stalls until that forwarding entry ages out, minutes later. QEMU
// announces a migrated VM itself (RARP self-announce); a restored container is announced with
// gratuitous ARP: an ARP request from its MAC for its own address, which teaches the switches
// where the MAC is now and refreshes its neighbours' ARP caches (RFC 5227's ARP Announcement).

// Announcement rounds, spaced like QEMU's self-announce (its step is 100 ms): a frame lost in
// one round is sent again in the next.
const (
	AnnounceRounds   = 3
	AnnounceInterval = 100 * time.Millisecond
)

// garpLen is an Ethernet header and an ARP packet for IPv4: 14 + 28 bytes. (Padding to the
// 60-byte minimum is the NIC's job; veths and bridges take short frames.)
const garpLen = 42

// GratuitousARP returns the frame announcing that ip is at mac: broadcast, an ARP request with
// the sender's and target's protocol address both ip and a zero target hardware address.
func GratuitousARP(mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if len(mac) != 6 || !ip.Is4() {
		return nil, fmt.Errorf("gratuitous ARP needs an Ethernet MAC and an IPv4 address, not %q and %s", mac, ip)
	}
	f := make([]byte, garpLen)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
	binary.BigEndian.PutUint16(f[14:], 1) // hardware type: Ethernet
	binary.BigEndian.PutUint16(f[16:], unix.ETH_P_IP)
	f[18], f[19] = 6, 4                   // address lengths
	binary.BigEndian.PutUint16(f[20:], 1) // request
	ip4 := ip.As4()
	copy(f[22:28], mac)
	copy(f[28:32], ip4[:])
	// f[32:38], the target MAC, stays zero.
	copy(f[38:42], ip4[:])
	return f, nil
}

// garpFrame is one announcement: a frame and the interface it leaves by.
type garpFrame struct {
	ifindex int
	ifname  string
	frame   []byte
}

// Announce sends gratuitous ARP for every IPv4 address of every interface but lo (up, with a MAC)
// of the network namespace at netnsPath, from that interface: rounds times, interval apart. The
// first round is sent before it returns (the switches know where the instance is when the caller
// goes on); the others follow in the background, where failures are only logged, so that a
// restore is not held up. It returns how many addresses it announces.
func Announce(netnsPath string, rounds int, interval time.Duration) (int, error) {
	fd := -1
	var frames []garpFrame
	// Only the socket and the address list need the namespace: a packet socket sends in the
	// namespace it was made in, from whichever thread.
	err := InNetns(netnsPath, func() error {
		var err error
		if frames, err = garpFrames(); err != nil || len(frames) == 0 {
			return err
		}
		// Protocol 0: the socket only sends, and so queues nothing it would have to drop.
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil || fd < 0 {
		return 0, err
	}
	if err := sendGARPs(fd, frames); err != nil || rounds <= 1 {
		unix.Close(fd)
		return len(frames), err
	}
	go func() {
		defer unix.Close(fd)
		for range rounds - 1 {
			time.Sleep(interval)
			if err := sendGARPs(fd, frames); err != nil {
				slog.Warn("network: gratuitous ARP", "netns", netnsPath, "err", err)
			}
		}
	}()
	return len(frames), nil
}

// garpFrames lists the announcements of the calling thread's network namespace.
func garpFrames() ([]garpFrame, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	var out []garpFrame
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagUp == 0 || len(ifc.HardwareAddr) != 6 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.To4() == nil {
				continue
			}
			ip, _ := netip.AddrFromSlice(ipn.IP.To4())
			f, err := GratuitousARP(ifc.HardwareAddr, ip)
			if err != nil {
				return nil, err
			}
			out = append(out, garpFrame{ifindex: ifc.Index, ifname: ifc.Name, frame: f})
		}
	}
	return out, nil
}

// sendGARPs sends one round; an interface that fails does not keep the others from theirs.
func sendGARPs(fd int, frames []garpFrame) error {
	var errs []error
	for _, g := range frames {
		to := &unix.SockaddrLinklayer{Ifindex: g.ifindex, Protocol: htons(unix.ETH_P_ARP), Halen: 6}
		copy(to.Addr[:], g.frame[0:6])
		if err := unix.Sendto(fd, g.frame, 0, to); err != nil {
			errs = append(errs, fmt.Errorf("send on %s: %w", g.ifname, err))
		}
	}
	return errors.Join(errs...)
}

// htons puts a 16-bit protocol number in network byte order, as sockaddr_ll wants it.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
