package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tandem/internal/errdefs"
)

// A bridge tandem makes carries its owner in its alias (ip link set alias): ownerMark and the
// owning Manager's Dir. The owner holds an exclusive lock on Dir/owner.lock, with its pid inside,
// while it lives. So a daemon that finds a bridge it has no record of (a second daemon in the same
// network namespace, or a state dir wiped while the bridge stayed) can tell whether a live daemon
// owns it (and which one), or whether it is an orphan it may adopt.
const (
	ownerMark = "tandem:"
	ownerLock = "owner.lock"
)

// takeOwnerLock marks dir as owned by this process for as long as it lives. It is best effort: a
// second Manager on the same dir (tests, a restart within one process) keeps the first one's lock.
func takeOwnerLock(dir string) *os.File {
	f, err := os.OpenFile(filepath.Join(dir, ownerLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		slog.Warn("network: owner lock", "err", err)
		return nil
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f
}

// ownerPID says whether a live process holds dir's owner lock: its pid, -1 if it holds it but its
// pid is unreadable, 0 if none does.
func ownerPID(dir string) int {
	f, err := os.Open(filepath.Join(dir, ownerLock))
	if err != nil {
		return 0
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return 0
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n]))); err == nil && pid > 0 {
		return pid
	}
	return -1
}

// checkBridgeOwner refuses a bridge that another live daemon owns. An unmarked bridge, one marked
// by this Manager, or one whose marked owner is gone may be taken.
func checkBridgeOwner(l *link, dir string) error {
	other, marked := strings.CutPrefix(l.Alias, ownerMark)
	if !marked || other == dir {
		return nil
	}
	pid := ownerPID(other)
	if pid == 0 {
		return nil
	}
	holder := "a live tandemd"
	if pid > 0 {
		holder = fmt.Sprintf("the tandemd with pid %d", pid)
	}
	return errdefs.Conflict("the bridge %q belongs to %s, whose networks are in %s, in this network namespace: "+
		"start this daemon with --default-network=false (or --network=false), or in a network namespace of its own",
		l.Name, holder, other)
}

// markBridge records this Manager as the bridge's owner.
func markBridge(ctx context.Context, name, dir string) error {
	if _, err := run(ctx, "", "ip", "link", "set", "dev", name, "alias", ownerMark+dir); err != nil {
		return fmt.Errorf("mark bridge owner: %w", err)
	}
	return nil
}

// adopt takes over a bridge named like a network this Manager should have but has no record of,
// when no live daemon owns it and no instance port remains on it: the network is recorded again
// (on the bridge's own subnet when it can be), the orphan's dnsmasq is stopped and up() rebuilds
// the rest. Otherwise it says what is in the way.
func (m *Manager) adopt(ctx context.Context, name string) (Network, error) {
	l, err := getLink(ctx, name)
	if err != nil {
		return Network{}, err
	}
	if l == nil { // gone meanwhile
		return m.Create(ctx, Config{Name: name})
	}
	if l.LinkInfo.Kind != "bridge" {
		return Network{}, errdefs.Conflict("an interface %q exists and is a %q, not tandem's bridge: remove it, or start tandemd with --default-network=false",
			name, orNone(l.LinkInfo.Kind))
	}
	if err := checkBridgeOwner(l, m.opts.Dir); err != nil {
		return Network{}, err
	}
	if !strings.HasPrefix(l.Alias, ownerMark) && !strings.EqualFold(l.Address, stableMAC("bridge/"+name, 0)) {
		return Network{}, errdefs.Conflict("a bridge %q (MAC %s) exists that tandem did not make: remove it, or start tandemd with --default-network=false",
			name, l.Address)
	}
	links, err := listLinks(ctx)
	if err != nil {
		return Network{}, err
	}
	var ports []string
	for _, p := range links {
		if p.Master == name {
			ports = append(ports, p.Name)
		}
	}
	if len(ports) > 0 {
		return Network{}, errdefs.Conflict("the bridge %q has no live owner but still has ports (%s) of instances no daemon manages: "+
			"remove them (ip link del) or the bridge, or start tandemd with --default-network=false", name, strings.Join(ports, ", "))
	}
	if err := stopForeignDnsmasq(ctx, name); err != nil {
		return Network{}, err
	}
	subnet := bridgeSubnet(ctx, name)
	if _, err := run(ctx, "", "ip", "addr", "flush", "dev", name); err != nil {
		return Network{}, err
	}
	slog.Warn("network: adopting a bridge no live daemon owns", "network", name, "was", orNone(l.Alias), "subnet", subnet)
	n, err := m.create(ctx, Config{Name: name, Subnet: subnet}, true)
	if err != nil && subnet != "" && errors.Is(err, errdefs.ErrInvalidArgument) {
		n, err = m.create(ctx, Config{Name: name}, true) // its old subnet clashes now: a fresh one
	}
	return n, err
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// bridgeSubnet returns the subnet of a bridge's gateway address (.1), or "".
func bridgeSubnet(ctx context.Context, name string) string {
	out, err := run(ctx, "", "ip", "-j", "-4", "addr", "show", "dev", name)
	if err != nil {
		return ""
	}
	var ifs []struct {
		Addrs []struct {
			Local  string `json:"local"`
			Prefix int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if json.Unmarshal([]byte(out), &ifs) != nil {
		return ""
	}
	for _, i := range ifs {
		for _, a := range i.Addrs {
			addr, err := netip.ParseAddr(a.Local)
			if err != nil {
				continue
			}
			p := netip.PrefixFrom(addr, a.Prefix).Masked()
			if p.IsValid() && p.Addr().Next() == addr {
				return p.String()
			}
		}
	}
	return ""
}

// stopForeignDnsmasq stops any dnsmasq of this network namespace that a tandem config file binds
// to the bridge: the orphan's, which holds the DHCP and DNS ports ours needs.
func stopForeignDnsmasq(ctx context.Context, bridge string) error {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return err
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		conf := dnsmasqConfOf(pid)
		if conf == "" {
			continue
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); ns != self {
			continue
		}
		data, err := os.ReadFile(conf)
		if err != nil || !strings.HasPrefix(string(data), "# tandem network ") || !strings.Contains(string(data), "\ninterface="+bridge+"\n") {
			continue
		}
		slog.Warn("network: stopping the dnsmasq of an orphaned bridge", "bridge", bridge, "pid", pid, "conf", conf)
		syscall.Kill(pid, syscall.SIGTERM)
		for deadline := time.Now().Add(5 * time.Second); isOurDnsmasq(pid, conf); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				deadline = time.Now().Add(5 * time.Second)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
	}
	return nil
}
