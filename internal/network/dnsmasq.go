package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tandem/internal/fsutil"
)

// dnsmasqFiles are the files of one network's dnsmasq.
type dnsmasqFiles struct {
	Conf, DHCPHosts, Hosts, Leases, Log, PID string
}

func newDnsmasqFiles(netDir, runDir, name string) dnsmasqFiles {
	return dnsmasqFiles{
		Conf:      filepath.Join(netDir, "dnsmasq.conf"),
		DHCPHosts: filepath.Join(netDir, "dhcp-hosts"),
		Hosts:     filepath.Join(netDir, "hosts"),
		Leases:    filepath.Join(netDir, "dnsmasq.leases"),
		Log:       filepath.Join(netDir, "dnsmasq.log"),
		PID:       filepath.Join(runDir, "dnsmasq-"+name+".pid"),
	}
}

// dnsmasqConfig renders the config file dnsmasq is started with (--conf-file, nothing else on its
// command line). DHCP is static-only: dnsmasq answers just the MACs in the hosts file, with the
// addresses tandem's IPAM chose, so an address never depends on dnsmasq's lease database.
func dnsmasqConfig(s *state, f dnsmasqFiles, user string) string {
	gw := s.gateway()
	mask := net.IP(net.CIDRMask(s.Subnet.Bits(), 32)).String()
	lines := []string{
		"# tandem network " + s.Name + ": generated; tandem rewrites it",
		"interface=" + s.Name,
		"except-interface=lo",
		"bind-interfaces",
		"user=" + user,
		"pid-file=" + f.PID,
		"log-facility=" + f.Log,
		"quiet-dhcp",
		"no-hosts",
		"domain-needed",
		"domain=" + s.DNSDomain,
		"local=/" + s.DNSDomain + "/",
		"expand-hosts",
		"addn-hosts=" + f.Hosts,
		fmt.Sprintf("dhcp-range=%s,static,%s,1h", s.Subnet.Addr(), mask),
		"dhcp-hostsfile=" + f.DHCPHosts,
		// Silent to unknown MACs, NAKs included: on a network bridged to other hosts', every host's
		// dnsmasq has the same gateway address and would refuse the others' instances' requests.
		"dhcp-ignore=tag:!known",
		"dhcp-leasefile=" + f.Leases,
		"dhcp-authoritative",
		"dhcp-option=option:router," + gw.String(),
		"dhcp-option=option:dns-server," + gw.String(),
		"dhcp-option=option:domain-search," + s.DNSDomain,
	}
	return strings.Join(lines, "\n") + "\n"
}

// dnsNames picks which attachment carries each instance's name: the first NIC (by name) it has on
// the network, so a second NIC does not make the name ambiguous.
func dnsNames(s *state) map[*attachment]string {
	names := map[*attachment]string{}
	seen := map[string]bool{}
	for _, a := range s.sortedAttachments() {
		if !seen[a.Instance] && validHostname(a.Instance) {
			names[a] = a.Instance
		}
		seen[a.Instance] = true
	}
	return names
}

// dhcpHosts renders the dhcp-hostsfile: one static lease per NIC, "MAC,IP[,name]".
func dhcpHosts(s *state) string {
	names := dnsNames(s)
	var b strings.Builder
	for _, a := range s.sortedAttachments() {
		if n := names[a]; n != "" {
			fmt.Fprintf(&b, "%s,%s,%s\n", a.MAC, a.IPv4, n)
		} else {
			fmt.Fprintf(&b, "%s,%s\n", a.MAC, a.IPv4)
		}
	}
	return b.String()
}

// addnHosts renders the addn-hosts file, so names resolve even before an instance asks for a lease
// (a VM or container configured statically).
func addnHosts(s *state) string {
	names := dnsNames(s)
	var b strings.Builder
	for _, a := range s.sortedAttachments() {
		if n := names[a]; n != "" {
			fmt.Fprintf(&b, "%s %s.%s %s\n", a.IPv4, n, s.DNSDomain, n)
		}
	}
	return b.String()
}

// writeIfChanged writes a file atomically unless it already holds data; it says whether it wrote.
func writeIfChanged(path, data string) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && string(old) == data {
		return false, nil
	}
	return true, fsutil.WriteFileAtomic(path, []byte(data), 0o644)
}

// writeHostFiles refreshes the two files dnsmasq rereads on SIGHUP.
func writeHostFiles(s *state, f dnsmasqFiles) (changed bool, err error) {
	c1, err := writeIfChanged(f.DHCPHosts, dhcpHosts(s))
	if err != nil {
		return false, err
	}
	c2, err := writeIfChanged(f.Hosts, addnHosts(s))
	return c1 || c2, err
}

// dnsmasqPID returns the pid of the network's dnsmasq, or 0 if it is not running. The pid in the
// pidfile counts only if that process is a dnsmasq started with this very config file: pids get
// reused, and tandem must never signal someone else's process.
func dnsmasqPID(f dnsmasqFiles) int {
	b, err := os.ReadFile(f.PID)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if isOurDnsmasq(pid, f.Conf) {
		return pid
	}
	return 0
}

func isOurDnsmasq(pid int, conf string) bool {
	return dnsmasqConfOf(pid) == conf
}

// dnsmasqConfOf returns the --conf-file of a dnsmasq process, or "" if pid is no dnsmasq (or gone,
// or a zombie whose cmdline is empty).
func dnsmasqConfOf(pid int) string {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(string(cmdline), "\x00")
	if len(args) == 0 || filepath.Base(args[0]) != "dnsmasq" {
		return ""
	}
	for _, a := range args[1:] {
		if conf, ok := strings.CutPrefix(a, "--conf-file="); ok {
			return conf
		}
	}
	return ""
}

// startDnsmasq starts the network's dnsmasq in its own session, so it outlives tandemd. dnsmasq
// daemonizes itself and its first process exits only once the daemon is serving (or has failed,
// printing why), so when this returns it is up.
func startDnsmasq(ctx context.Context, f dnsmasqFiles) error {
	bin, err := exec.LookPath("dnsmasq")
	if err != nil {
		return fmt.Errorf("dnsmasq not found (install dnsmasq-base): %w", err)
	}
	os.Remove(f.PID)
	// Errors go to a file, not a pipe: the daemon inherits the descriptor, and a pipe would keep
	// Wait blocked for as long as dnsmasq lives.
	errf, err := os.CreateTemp(filepath.Dir(f.Conf), "dnsmasq-start-*.err")
	if err != nil {
		return err
	}
	defer os.Remove(errf.Name())
	defer errf.Close()
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--conf-file="+f.Conf)
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(errf.Name())
		return fmt.Errorf("start dnsmasq: %v: %s", err, bytes.TrimSpace(msg))
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if dnsmasqPID(f) > 0 {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("start dnsmasq: no running dnsmasq in %s after start", f.PID)
}

// stopDnsmasq terminates the network's dnsmasq, if it runs, and waits until it is gone.
func stopDnsmasq(ctx context.Context, f dnsmasqFiles) error {
	pid := dnsmasqPID(f)
	if pid == 0 {
		os.Remove(f.PID)
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for isOurDnsmasq(pid, f.Conf) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop dnsmasq %d: %w", pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := os.Remove(f.PID); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// reloadDnsmasq makes a running dnsmasq reread its hosts files; with none running there is nothing
// to do (Recover starts it with the current files).
func reloadDnsmasq(f dnsmasqFiles) error {
	if pid := dnsmasqPID(f); pid > 0 {
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			return fmt.Errorf("reload dnsmasq %d: %w", pid, err)
		}
	}
	return nil
}
