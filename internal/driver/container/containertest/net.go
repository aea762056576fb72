package containertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"tandem/internal/driver"
)

// Net is a test network: a bridge on the host with an address (the clients' side), into which
// PrepareNetwork plugs each container's eth0 through a veth, with a MAC and an address fixed per
// container id (an IPAM stand-in). It plays the network driver: several container drivers
// ("hosts") can share one Net, as hosts share an L2 network.
type Net struct {
	Bridge string
	HostIP string // the bridge's address, e.g. 10.213.7.1
	prefix string // "10.213.7."
	// Static: the first plug of a container also sets its address and default route (a busybox
	// without a DHCP client). Without it, StartDHCP serves the addresses.
	Static bool
	dir    string
	dhcp   *exec.Cmd

	mu    sync.Mutex
	addrs map[string]int  // container id -> last octet
	plugs map[string]int  // container id -> times plugged
	ifs   map[string]bool // host-side interfaces made
	seq   int
}

// NewNet makes a bridge with a random 10.213.x.0/24 subnet; dir holds dnsmasq's files.
func NewNet(dir string) (*Net, error) {
	b := make([]byte, 3)
	rand.Read(b)
	n := &Net{Bridge: "tbr" + hex.EncodeToString(b), prefix: fmt.Sprintf("10.213.%d.", int(b[0])%250+2), dir: dir,
		addrs: map[string]int{}, plugs: map[string]int{}, ifs: map[string]bool{}}
	n.HostIP = n.prefix + "1"
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", n.HostIP + "/24", "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if err := ip(args...); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// Close stops DHCP and removes the bridge and every veth it made.
func (n *Net) Close() {
	if n.dhcp != nil {
		n.dhcp.Process.Kill()
		n.dhcp.Wait()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for name := range n.ifs {
		exec.Command("ip", "link", "del", name).Run()
	}
	exec.Command("ip", "link", "del", n.Bridge).Run()
}

// Addr returns the address a container gets (assigned on first use).
func (n *Net) Addr(id string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addrLocked(id)
}

func (n *Net) addrLocked(id string) string {
	if _, ok := n.addrs[id]; !ok {
		n.addrs[id] = len(n.addrs) + 10
	}
	return fmt.Sprintf("%s%d", n.prefix, n.addrs[id])
}

// MAC returns a container's MAC (locally administered, from its address).
func (n *Net) MAC(id string) string {
	var a [4]int
	fmt.Sscanf(n.Addr(id), "%d.%d.%d.%d", &a[0], &a[1], &a[2], &a[3])
	return fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// PrepareNetwork is the driver's Options.PrepareNetwork: a new veth per call (a unique host-side
// name, since the previous pair may still be on its way out with its namespace), eth0 inside.
func (n *Net) PrepareNetwork(ctx context.Context, h *driver.Handle, netnsPath string) error {
	addr, mac := n.Addr(h.ID), n.MAC(h.ID)
	n.mu.Lock()
	n.seq++
	hostIf := fmt.Sprintf("tv%s%d", n.Bridge[3:], n.seq)
	n.ifs[hostIf] = true
	n.plugs[h.ID]++
	first := n.plugs[h.ID] == 1
	n.mu.Unlock()
	steps := [][]string{
		{"ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "address", mac, "netns", netnsPath},
		{"ip", "link", "set", hostIf, "master", n.Bridge, "up"},
		{"nsenter", "--net=" + netnsPath, "ip", "link", "set", "eth0", "up"},
	}
	if n.Static && first {
		steps = append(steps,
			[]string{"nsenter", "--net=" + netnsPath, "ip", "addr", "replace", addr + "/24", "dev", "eth0"},
			[]string{"nsenter", "--net=" + netnsPath, "ip", "route", "replace", "default", "via", n.HostIP})
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// Plugs returns how many times a container was plugged in.
func (n *Net) Plugs(id string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.plugs[id]
}

// StartDHCP runs dnsmasq on the bridge, answering the given containers' MACs with their
// addresses (and the bridge as their router).
func (n *Net) StartDHCP(ids ...string) error {
	var hosts []string
	for _, id := range ids {
		hosts = append(hosts, fmt.Sprintf("dhcp-host=%s,%s", n.MAC(id), n.Addr(id)))
	}
	conf := filepath.Join(n.dir, n.Bridge+"-dnsmasq.conf")
	body := fmt.Sprintf("port=0\ninterface=%s\nbind-interfaces\nexcept-interface=lo\ndhcp-range=%s0,static,255.255.255.0,1h\n"+
		"dhcp-option=option:router,%s\ndhcp-leasefile=%s\npid-file=\n%s\n",
		n.Bridge, n.prefix, n.HostIP, filepath.Join(n.dir, n.Bridge+".leases"), strings.Join(hosts, "\n"))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		return err
	}
	n.dhcp = exec.Command("dnsmasq", "--keep-in-foreground", "--conf-file="+conf, "--user=root", "--log-facility="+filepath.Join(n.dir, n.Bridge+"-dnsmasq.log"))
	n.dhcp.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return n.dhcp.Start()
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}
