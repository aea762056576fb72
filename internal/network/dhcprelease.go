package network

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
)

// dnsmasq keeps a lease for its whole lease time even after tandem drops the NIC from the hosts
// file, and refuses the address to the next NIC that is given it ("not using configured address
// ... because it is leased to ..."). So when a NIC lets go of a MAC/address pair, tandem makes
// dnsmasq forget the lease: a DHCPRELEASE while it runs, an edit of its lease file when it does not.

// dhcpReleasePacket builds a DHCPRELEASE for ip held by mac, addressed to server (the gateway,
// which dnsmasq checks against the server identifier).
func dhcpReleasePacket(server netip.Addr, mac net.HardwareAddr, ip netip.Addr, xid uint32) []byte {
	p := make([]byte, 300)     // the minimum BOOTP size
	p[0], p[1], p[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, 6-byte address
	binary.BigEndian.PutUint32(p[4:], xid)
	ciaddr := ip.As4()
	copy(p[12:16], ciaddr[:])
	copy(p[28:44], mac)
	copy(p[236:240], []byte{99, 130, 83, 99}) // magic cookie
	sid := server.As4()
	opts := []byte{53, 1, 7, 54, 4, sid[0], sid[1], sid[2], sid[3], 255} // DHCPRELEASE, server id, end
	copy(p[240:], opts)
	return p
}

// releaseLease sends the DHCPRELEASE the way dnsmasq's dhcp_release does: from a socket bound to
// the bridge, to the bridge's own address, so the kernel hands it to dnsmasq as received there.
func releaseLease(ctx context.Context, bridge string, server netip.Addr, mac string, ip netip.Addr) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return err
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = syscall.BindToDevice(int(fd), bridge) }); err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", "0.0.0.0:0")
	if err != nil {
		return fmt.Errorf("release lease of %s: %w", ip, err)
	}
	defer conn.Close()
	var xid [4]byte
	rand.Read(xid[:])
	conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
	pkt := dhcpReleasePacket(server, hw, ip, binary.BigEndian.Uint32(xid[:]))
	if _, err := conn.WriteTo(pkt, &net.UDPAddr{IP: server.AsSlice(), Port: 67}); err != nil {
		return fmt.Errorf("release lease of %s: %w", ip, err)
	}
	return nil
}

// pruneLeases rewrites a stopped dnsmasq's lease file ("expiry MAC IP name client-id" per line),
// keeping only the leases keep accepts.
func pruneLeases(path string, keep func(mac, ip string) bool) error {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var out strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && !keep(strings.ToLower(f[1]), f[2]) {
			continue
		}
		out.WriteString(line)
	}
	if out.String() == string(b) {
		return nil
	}
	_, err = writeIfChanged(path, out.String())
	return err
}

// leaseKeeper accepts the leases of the network's current MAC/address pairs.
func leaseKeeper(s *state) func(mac, ip string) bool {
	pairs := map[string]bool{}
	for _, a := range s.Attachments {
		pairs[a.MAC+" "+a.IPv4.String()] = true
	}
	return func(mac, ip string) bool { return pairs[mac+" "+ip] }
}

// forgetLease makes the network's dnsmasq drop whatever lease it holds for a pair no NIC has any
// more. Failing to is not fatal (the lease times out in an hour), so it only reports.
func (m *Manager) forgetLease(ctx context.Context, s *state, mac string, ip netip.Addr) error {
	f := m.files(s.Name)
	if dnsmasqPID(f) > 0 {
		return releaseLease(ctx, s.Name, s.gateway(), mac, ip)
	}
	return pruneLeases(f.Leases, leaseKeeper(s))
}
