package system

import (
	"os/exec"
	"strings"
	"testing"

	"tandem/internal/testenv"
)

// TestNewUserErrors: what a new user hit on main, through the CLI against a real daemon (fake
// driver, real networks): each mistake gets a clear refusal and changes nothing.
func TestNewUserErrors(t *testing.T) {
	testenv.Require(t, "root", "iproute2", "nsenter", "dnsmasq", "nft", "busybox")
	h := startHost(t, "--driver", "fake")
	h.must("image", "build", "busybox")
	h.must("launch", "busybox", "c1")

	refused := func(want string, args ...string) {
		t.Helper()
		out, errOut, err := h.tandem(args...)
		if err == nil || !strings.Contains(errOut, want) || strings.Contains(errOut, "Internal") {
			t.Errorf("tandem %s: %v, want a refusal saying %q:\n%s%s", strings.Join(args, " "), err, want, out, errOut)
		}
	}
	refused(`network name "default" is reserved`, "network", "create", "default")
	refused(`network name "all" is reserved`, "network", "create", "all")
	refused(`instance "c1" already exists`, "launch", "busybox", "c1")
	refused("larger than 1EiB", "launch", "busybox", "c2", "-c", "limits.disk=18446744073709551615")
	refused("loopback", "config", "device", "add", "c1", "eth1", "nic", "network=tandem0", "name=lo")
	for _, link := range []string{"default", "all"} {
		if err := exec.Command("ip", "-n", h.netns, "link", "show", link).Run(); err == nil {
			t.Errorf("a refused network create left an interface %q", link)
		}
	}
	if out, _, _ := h.tandem("info", "c2"); out != "" {
		t.Errorf("a refused launch left c2:\n%s", out)
	}
	if help := h.must("launch", "--help"); !strings.Contains(help, "network=tandem0") || strings.Contains(help, "network=default") {
		t.Errorf("launch --help names a network that does not exist:\n%s", help)
	}
}
