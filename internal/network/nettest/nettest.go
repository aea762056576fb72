// Package nettest runs network tests inside a fresh network namespace, with helper namespaces that
// stand in for containers, so nothing touches the host's real network. It is for tests only.
package nettest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/internal/testenv"
)

const childEnv = "TANDEM_NETTEST_NETNS"

// InFreshNetns makes the calling test run in a new network namespace. In the parent test process
// it creates the namespace, re-runs only this test there (ip netns exec also gives it a private
// mount namespace and /sys), removes the namespace and anything left running in it, and returns
// false: the caller returns too. In the re-run child it returns true. It stops the test (see
// testenv.Require) without root, iproute2 or one of components.
func InFreshNetns(t *testing.T, components ...string) bool {
	if os.Getenv(childEnv) != "" {
		return true
	}
	testenv.Require(t, append([]string{"root", "iproute2"}, components...)...)
	suffix := fmt.Sprintf("%06x", rand.IntN(1<<24))
	ns := "tandem-test-" + suffix
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		testenv.Unsupported(t, "cannot create a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() {
		killLeftovers(t, ns)
		exec.Command("ip", "netns", "del", ns).Run()
		leftovers, _ := filepath.Glob("/run/netns/tdt" + suffix + "*")
		for _, f := range leftovers {
			os.Remove(f)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	args := []string{"netns", "exec", ns, os.Args[0], "-test.run=^" + t.Name() + "$", "-test.timeout=4m"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Env = append(os.Environ(), childEnv+"="+suffix)
	out, err := cmd.CombinedOutput()
	t.Logf("in netns %s:\n%s", ns, out)
	if err != nil {
		t.Fatalf("%s in netns %s: %v", t.Name(), ns, err)
	}
	return false
}

// killLeftovers kills what still runs in a namespace (a dnsmasq a failed test did not stop), so
// that deleting it really frees it.
func killLeftovers(t *testing.T, ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if fmt.Sscan(f, &pid); pid > 0 {
			t.Logf("killing leftover pid %d in %s", pid, ns)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Env holds the helper namespaces of one child run. Every command is bounded in time.
type Env struct {
	t      *testing.T
	suffix string
	Dir    string // scratch directory, removed at the end
}

// NewEnv starts a child run: loopback up, a scratch directory.
func NewEnv(t *testing.T) *Env {
	dir, err := os.MkdirTemp("", "tdnet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &Env{t: t, suffix: os.Getenv(childEnv), Dir: dir}
	e.Sh(t, "ip", "link", "set", "lo", "up")
	return e
}

// NS names a helper namespace, unique to this run.
func (e *Env) NS(name string) string { return "tdt" + e.suffix + "-" + name }

// NSPath is the path a driver would be given for a helper namespace.
func (e *Env) NSPath(name string) string { return "/run/netns/" + e.NS(name) }

// AddNS creates a helper namespace (loopback up) and, when the test ends, kills what runs in it
// and deletes it.
func (e *Env) AddNS(t *testing.T, name string) string {
	ns := e.NS(name)
	e.Sh(t, "ip", "netns", "add", ns)
	e.Sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	e.t.Cleanup(func() {
		killLeftovers(e.t, ns)
		exec.Command("ip", "netns", "del", ns).Run()
	})
	return ns
}

// Try runs a command and returns its combined output.
func (e *Env) Try(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Sh is Try that fails the test on error.
func (e *Env) Sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := e.Try(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// In runs a command inside helper namespace name, or in the test's own namespace (the host's) for "".
func (e *Env) In(name string, args ...string) (string, error) {
	line := e.inNS(name, args)
	return e.Try(line[0], line[1:]...)
}

// inNS is the command line that runs args in helper namespace name ("": the test's own).
func (e *Env) inNS(name string, args []string) []string {
	if name == "" {
		return args
	}
	return append([]string{"ip", "netns", "exec", e.NS(name)}, args...)
}

// BG starts a long-running helper (a server) in a namespace (as In); it is killed, by pid, at the end.
func (e *Env) BG(t *testing.T, name string, args ...string) {
	line := e.inNS(name, args)
	cmd := exec.Command(line[0], line[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

// Ping sends one ping from a helper namespace.
func (e *Env) Ping(name, target string) error {
	_, err := e.In(name, "busybox", "ping", "-c", "1", "-W", "1", target)
	return err
}

// Fetch downloads url from a helper namespace, retrying while a fresh server comes up. (No wget -T:
// it crashes this busybox; Try bounds the time.)
func (e *Env) Fetch(name, url string) (string, time.Duration, error) {
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		start := time.Now()
		var out string
		if out, err = e.In(name, "busybox", "wget", "-q", "-O", "-", url); err == nil {
			return out, time.Since(start), nil
		}
	}
	return "", 0, err
}

const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
	busybox arping -U -c 1 -w 1 -I "$interface" "$ip" >/dev/null 2>&1 # tell neighbours, as OSes do
	echo "$ip $router $dns $domain" > "$LEASE_OUT"
	;;
esac
`

// DHCP runs busybox udhcpc on eth0 of a helper namespace, configures what it gets, and returns
// "ip router dns domain".
func (e *Env) DHCP(name string) (string, error) {
	script := filepath.Join(e.Dir, "udhcpc.sh")
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		return "", err
	}
	outFile := filepath.Join(e.Dir, name+".lease")
	os.Remove(outFile)
	if _, err := e.In(name, "env", "LEASE_OUT="+outFile, "busybox", "udhcpc",
		"-i", "eth0", "-f", "-q", "-n", "-t", "8", "-T", "1", "-s", script); err != nil {
		return "", err
	}
	got, err := os.ReadFile(outFile)
	return strings.TrimSpace(string(got)), err
}

// Resolver gives a helper namespace a resolv.conf (ip netns exec bind-mounts /etc/netns/NS/*).
func (e *Env) Resolver(name, nameserver, search string) {
	etc := filepath.Join("/etc/netns", e.NS(name))
	_, err := os.Stat(filepath.Dir(etc))
	madeParent := os.IsNotExist(err)
	os.MkdirAll(etc, 0o755)
	e.t.Cleanup(func() {
		os.RemoveAll(etc)
		if madeParent {
			os.Remove(filepath.Dir(etc)) // only if still empty
		}
	})
	os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+nameserver+"\nsearch "+search+"\n"), 0o644)
}

// Links lists the interface names of the test's namespace.
func (e *Env) Links(t *testing.T) []string {
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(e.Sh(t, "ip", "-br", "link")), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, strings.SplitN(f[0], "@", 2)[0])
		}
	}
	return names
}
