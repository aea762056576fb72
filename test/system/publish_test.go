package system

import (
	"strings"
	"testing"

	"tandem/internal/testenv"
)

// An image built here, exported and imported back, runs as a container; a changed container is
// published as a new image that runs as a container and as a VM, with its files owned as inside.
func TestImageRunsAndPublishes(t *testing.T) {
	testenv.Require(t, realDrivers...)
	h := startHost(t, "--accel", "tcg", "--default-network=false")
	h.must("image", "build", "busybox")
	file := t.TempDir() + "/bb.tar"
	h.must("image", "export", "busybox", file)
	h.must("image", "delete", "busybox")
	h.must("image", "import", file, "--alias", "busybox")

	h.must("launch", "busybox", "c1")
	h.must("exec", "c1", "--", "sh", "-c", "echo published-marker > /root/marker && chown 1000:1000 /root/marker")
	if _, errOut, err := h.tandem("publish", "c1", "--alias", "mine"); err == nil || !strings.Contains(errOut, "stop it") {
		t.Fatalf("publishing a running container: %v %s", err, errOut)
	}
	h.must("stop", "c1")
	h.must("publish", "c1", "--alias", "mine")

	h.must("launch", "mine", "c2")
	h.must("launch", "mine", "v2", "--vm")
	waitAgent(t, h, "v2")
	for _, name := range []string{"c2", "v2"} {
		if out := h.must("exec", name, "--", "cat", "/root/marker"); out != "published-marker\n" {
			t.Fatalf("marker in %s: %q", name, out)
		}
		// Ownership was mapped back from the container's shifted ids to the ids inside.
		if out := h.must("exec", name, "--", "stat", "-c", "%u:%g", "/root/marker"); out != "1000:1000\n" {
			t.Fatalf("owner in %s: %q", name, out)
		}
		if out := h.must("exec", name, "--", "hostname"); out != name+"\n" {
			t.Fatalf("hostname in %s: %q", name, out)
		}
	}
	for _, name := range []string{"c1", "c2", "v2"} {
		h.must("delete", name, "--force")
	}
	h.must("image", "delete", "mine")
}
