package system

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem/internal/network"
	"tandem/internal/network/nettest"
	"tandem/internal/testenv"
)

// TestNetworkHostInput: an instance on a managed network reaches only DHCP, DNS and ping on its
// host. A stand-in for the host's API listens on every address of the host; the instance's connect
// to it through the bridge is refused at once, while DHCP, DNS, ping, NAT to the outside and the
// host's own connections to the instance still work. A network created with host access lets the
// same connect through.
func TestNetworkHostInput(t *testing.T) {
	if !nettest.InFreshNetns(t, "nft", "dnsmasq", "busybox") {
		return
	}
	env := nettest.NewEnv(t)
	ctx := testenv.Context(t, 3*time.Minute)
	m, err := network.NewManager(network.Options{Dir: filepath.Join(env.Dir, "networks"), RunDir: filepath.Join(env.Dir, "run")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Minute)
		defer ccancel()
		for _, n := range m.List(cctx) {
			for _, l := range n.Leases {
				m.Detach(cctx, n.Name, l.Instance, l.NIC)
			}
			m.Delete(cctx, n.Name)
		}
	})
	closed, err := m.EnsureDefault(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open, err := m.Create(ctx, network.Config{Name: "open", HostAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	plug := func(net, inst string) network.Lease {
		env.AddNS(t, inst)
		l, err := m.Attach(ctx, net, inst, "eth0", network.AttachOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.PlugVeth(ctx, net, l, env.NSPath(inst), "eth0", ""); err != nil {
			t.Fatal(err)
		}
		if got, err := env.DHCP(inst); err != nil || !strings.HasPrefix(got, l.IPv4.String()+" ") {
			t.Fatalf("%s: DHCP through the input filter: %q %v", inst, got, err)
		}
		return l
	}
	c1 := plug(network.DefaultName, "c1")
	plug("open", "c2")

	// The host's "API": an HTTP server on every address of the host, port 8443.
	www := filepath.Join(env.Dir, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "api"), []byte("host api\n"), 0o644)
	env.BG(t, "", "busybox", "httpd", "-f", "-p", "8443", "-h", www)
	if _, _, err := env.Fetch("", "http://127.0.0.1:8443/api"); err != nil {
		t.Fatalf("the host's server: %v", err)
	}

	// c1 (no host access): refused at once, on the gateway and on another of the host's addresses.
	env.Sh(t, "ip", "link", "add", "tdthost", "up", "type", "veth")
	env.Sh(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "tdthost")
	for _, addr := range []string{closed.Gateway, "192.0.2.1"} {
		start := time.Now()
		out, err := env.In("c1", "busybox", "wget", "-q", "-O", "-", "http://"+addr+":8443/api")
		took := time.Since(start)
		if err == nil {
			t.Fatalf("c1 reached the host's API at %s: %q", addr, out)
		}
		if !strings.Contains(out, "refused") || took > 2*time.Second {
			t.Fatalf("c1 -> %s:8443: want a quick refusal, got %q after %s", addr, out, took)
		}
		t.Logf("c1 -> host %s:8443 refused in %s", addr, took.Round(time.Millisecond))
	}
	// What c1 keeps: ping and DNS on its gateway, the host's connections to it.
	if err := env.Ping("c1", closed.Gateway); err != nil {
		t.Fatalf("ping gateway: %v", err)
	}
	if out, err := env.In("c1", "busybox", "nslookup", "c1.tandem", closed.Gateway); err != nil || !strings.Contains(out, c1.IPv4.String()) {
		t.Fatalf("DNS through the input filter: %v\n%s", err, out)
	}
	env.BG(t, "c1", "busybox", "httpd", "-f", "-p", "8000", "-h", www)
	if body, _, err := env.Fetch("", "http://"+c1.IPv4.String()+":8000/api"); err != nil || body != "host api\n" {
		t.Fatalf("the host's own connection to c1: %q %v", body, err)
	}
	// NAT to the outside still works (the forward path does not pass the input hook).
	outsideServer(t, env, www)
	if body, _, err := env.Fetch("c1", "http://198.51.100.2:8080/api"); err != nil || body != "host api\n" {
		t.Fatalf("outside server through NAT: %q %v", body, err)
	}

	// c2 on a network with host access reaches the same server.
	if body, _, err := env.Fetch("c2", "http://"+open.Gateway+":8443/api"); err != nil || body != "host api\n" {
		t.Fatalf("c2 (host access) -> host API: %q %v", body, err)
	}
}

// TestContainerCannotReachHostAPI: a real container on tandem0 gets its address by DHCP and
// resolves names through the host, but its connect to the host's HTTPS API (listening on every
// address of the host) is refused at once; a container on a network with host access connects.
func TestContainerCannotReachHostAPI(t *testing.T) {
	testenv.Require(t, "root", "runc", "dnsmasq", "nft", "busybox")
	h := startHost(t, "--listen", "0.0.0.0:8443")
	h.must("image", "build", "busybox")
	h.must("network", "create", "open", "--host-access")
	h.must("launch", "busybox", "c1")
	h.must("launch", "busybox", "c2", "--device", "eth0,type=nic,network=open")

	connect := func(name, addr string) (string, time.Duration) {
		start := time.Now()
		out, errOut, _ := h.tandem("exec", name, "--", "sh", "-c", "nc -w 3 "+addr+" 8443 </dev/null; echo rc=$?")
		return strings.TrimSpace(out + errOut), time.Since(start)
	}
	for _, c := range []struct{ name, network string }{{"c1", "tandem0"}, {"c2", "open"}} {
		var n struct{ Gateway string }
		json.Unmarshal([]byte(h.must("network", "info", c.network, "--format", "json")), &n)
		want := ipOf(t, h, c.name)
		waitFor(t, 30*time.Second, c.name+"'s DHCP lease", func() bool {
			out, _, _ := h.tandem("exec", c.name, "--", "ip", "-4", "addr", "show", "eth0")
			return strings.Contains(out, want+"/")
		})
		if out, errOut, err := h.tandem("exec", c.name, "--", "nslookup", c.name+".tandem", n.Gateway); err != nil || !strings.Contains(out, want) {
			t.Fatalf("%s: DNS on the host: %v\n%s%s", c.name, err, out, errOut)
		}
		out, took := connect(c.name, n.Gateway)
		t.Logf("%s -> host API %s:8443: %q in %s", c.name, n.Gateway, out, took.Round(time.Millisecond))
		switch {
		case c.name == "c1" && (!strings.Contains(out, "rc=1") || !strings.Contains(out, "refused") || took > 3*time.Second):
			t.Errorf("c1 (tandem0) reached the host's API, or waited for its refusal: %q after %s", out, took)
		case c.name == "c2" && !strings.Contains(out, "rc=0"):
			t.Errorf("c2 (host access) could not reach the host's API: %q", out)
		}
	}
}
