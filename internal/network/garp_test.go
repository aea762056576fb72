package network

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/network/nettest"
)

func TestGratuitousARPFrame(t *testing.T) {
	mac, _ := net.ParseMAC("00:16:3e:12:34:56")
	f, err := GratuitousARP(mac, netip.MustParseAddr("10.77.0.9"))
	if err != nil {
		t.Fatal(err)
	}
	want := "ffffffffffff" + "00163e123456" + "0806" + // Ethernet: broadcast, from mac, ARP
		"0001" + "0800" + "06" + "04" + "0001" + // Ethernet/IPv4, request
		"00163e123456" + "0a4d0009" + // sender: mac, 10.77.0.9
		"000000000000" + "0a4d0009" // target: zero MAC, the same address
	if got := hex.EncodeToString(f); got != want {
		t.Fatalf("frame\n%s\nwant\n%s", got, want)
	}
	for _, c := range []struct {
		mac string
		ip  string
	}{{"00:16:3e:12:34:56", "fd00::1"}, {"00:16:3e:12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0:12", "10.0.0.1"}} {
		hw, _ := net.ParseMAC(c.mac)
		if _, err := GratuitousARP(hw, netip.MustParseAddr(c.ip)); err == nil {
			t.Errorf("%s %s: accepted", c.mac, c.ip)
		}
	}
}

// Announce, in a namespace on a bridge, sends AnnounceRounds frames per address and interface,
// with the right sender MAC and IP, as seen by a packet socket in another namespace on the bridge;
// the bridge learns the sender's MAC on its port.
func TestAnnounceOnBridge(t *testing.T) {
	if !nettest.InFreshNetns(t) {
		return
	}
	env := nettest.NewEnv(t)
	env.Sh(t, "ip", "link", "add", "br0", "up", "type", "bridge", "forward_delay", "0")
	env.AddNS(t, "a")
	env.AddNS(t, "b")
	// a: eth0 with two addresses, eth1 with one, eth2 down (not announced); b: eth0, listening.
	for _, l := range []struct{ port, ns, ifname, mac, addr string }{
		{"pa0", "a", "eth0", "00:16:3e:00:00:a0", "10.88.0.2/24"},
		{"pa1", "a", "eth1", "00:16:3e:00:00:a1", "10.88.1.2/24"},
		{"pa2", "a", "eth2", "00:16:3e:00:00:a2", "10.88.2.2/24"},
		{"pb0", "b", "eth0", "00:16:3e:00:00:b0", "10.88.0.9/24"},
	} {
		env.Sh(t, "ip", "link", "add", l.port, "master", "br0", "up", "type", "veth",
			"peer", "name", l.ifname, "address", l.mac, "netns", env.NSPath(l.ns))
		env.Sh(t, "ip", "-n", env.NS(l.ns), "addr", "add", l.addr, "dev", l.ifname)
		if l.ifname != "eth2" {
			env.Sh(t, "ip", "-n", env.NS(l.ns), "link", "set", l.ifname, "up")
		}
	}
	env.Sh(t, "ip", "-n", env.NS("a"), "addr", "add", "10.88.0.3/24", "dev", "eth0")

	var fd int
	if err := InNetns(env.NSPath("b"), func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP))); err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifc.Index})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000})

	start := time.Now()
	n, err := Announce(env.NSPath("a"), AnnounceRounds, AnnounceInterval)
	took := time.Since(start)
	if err != nil || n != 3 {
		t.Fatalf("Announce: %d addresses, %v; want 3", n, err)
	}
	if took > AnnounceInterval {
		t.Errorf("Announce took %s: only its first round should hold the caller up", took)
	}
	want := map[string]string{} // frame -> what it announces
	for _, w := range []struct{ mac, ip string }{
		{"00:16:3e:00:00:a0", "10.88.0.2"}, {"00:16:3e:00:00:a0", "10.88.0.3"}, {"00:16:3e:00:00:a1", "10.88.1.2"},
	} {
		mac, _ := net.ParseMAC(w.mac)
		f, _ := GratuitousARP(mac, netip.MustParseAddr(w.ip))
		want[string(f)] = w.mac + " " + w.ip
	}
	seen := map[string][]time.Time{}
	buf := make([]byte, 1500)
	for deadline := start.Add(time.Duration(AnnounceRounds)*AnnounceInterval + 500*time.Millisecond); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // the receive timeout
		}
		f := buf[:n]
		if len(f) >= garpLen && bytes.Equal(f[32:38], make([]byte, 6)) && bytes.Equal(f[28:32], f[38:42]) {
			seen[string(f[:garpLen])] = append(seen[string(f[:garpLen])], time.Now())
		}
	}
	for f, what := range want {
		times := seen[string(f)]
		if len(times) != AnnounceRounds {
			t.Errorf("%s: %d frames, want %d", what, len(times), AnnounceRounds)
			continue
		}
		if spread := times[len(times)-1].Sub(times[0]); spread < AnnounceInterval {
			t.Errorf("%s: rounds only %s apart in all", what, spread)
		}
		delete(seen, f)
	}
	for f := range seen {
		t.Errorf("unexpected announcement %x", f)
	}
	if fdb := env.Sh(t, "bridge", "fdb", "show", "br", "br0"); !strings.Contains(fdb, "00:16:3e:00:00:a0 dev pa0 master br0") {
		t.Errorf("the bridge did not learn a's MAC on its port:\n%s", fdb)
	}
}
