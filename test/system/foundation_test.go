package system

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"tandem/api"
)

// The whole control plane through the CLI, with the fake driver: launch, list in three formats, stop,
// start, delete, bad input, and a SIGKILL of the daemon in the middle of a slow operation.
func TestFoundationThroughCLI(t *testing.T) {
	d := startDaemon(t, "--driver", "fake", "--fake-delay", "400ms", "--network=false")

	d.must("launch", "busybox", "c1", "-c", "limits.memory=256MiB")
	d.must("launch", "busybox", "v1", "--vm", "-c", "limits.cpu=2")

	table := d.must("list")
	for _, want := range []string{"NAME", "c1", "v1", "container", "vm", "Running"} {
		if !strings.Contains(table, want) {
			t.Fatalf("list table lacks %q:\n%s", want, table)
		}
	}
	var fromJSON []api.Instance
	if err := json.Unmarshal([]byte(d.must("list", "--format", "json")), &fromJSON); err != nil || len(fromJSON) != 2 {
		t.Fatalf("list json: %v %+v", err, fromJSON)
	}
	var fromYAML []map[string]any
	if err := yaml.Unmarshal([]byte(d.must("list", "--format", "yaml")), &fromYAML); err != nil || len(fromYAML) != 2 {
		t.Fatalf("list yaml: %v %+v", err, fromYAML)
	}
	if fromJSON[0].Name != "c1" || fromJSON[0].Status != api.StatusRunning || fromJSON[1].Type != api.TypeVM {
		t.Fatalf("list json content: %+v", fromJSON)
	}

	d.must("stop", "c1")
	assertStatus(t, d, "c1", api.StatusStopped)
	d.must("start", "c1")
	assertStatus(t, d, "c1", api.StatusRunning)
	d.must("pause", "v1")
	assertStatus(t, d, "v1", api.StatusPaused)
	d.must("resume", "v1")
	d.must("config", "set", "c1", "user.owner=ops")
	if got := strings.TrimSpace(d.must("config", "get", "c1", "user.owner")); got != "ops" {
		t.Fatalf("config get: %q", got)
	}

	// Bad input: one clear line, non-zero exit, nothing changed.
	for _, args := range [][]string{
		{"launch", "busybox", "Bad/Name"},
		{"launch", "busybox", "c3", "-c", "limits.bogus=1"},
		{"launch", "busybox", "c1"},
		{"info", "nope"},
		{"delete", "c1"}, // running
	} {
		_, errOut, err := d.tandem(args...)
		if err == nil || !strings.HasPrefix(errOut, "Error: ") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
			t.Errorf("tandem %v: err=%v stderr=%q", args, err, errOut)
		}
	}
	if n := len(instances(t, d)); n != 2 {
		t.Fatalf("bad input changed the instance count to %d", n)
	}

	// SIGKILL the daemon while a slow launch runs.
	slow := exec.Command(filepath.Join(binaries(t), "tandem"), "--dir", d.dir, "launch", "busybox", "c2")
	if err := slow.Start(); err != nil {
		t.Fatal(err)
	}
	opID := waitForRunningOperation(t, d, "c2")
	d.stop(syscall.SIGKILL)
	slow.Wait() // the CLI loses its daemon and exits
	d.start()

	op := api.Operation{}
	if err := json.Unmarshal([]byte(d.must("operation", "show", opID, "--format", "json")), &op); err != nil {
		t.Fatal(err)
	}
	if op.Status != api.OpFailure && op.Status != api.OpSuccess {
		t.Fatalf("interrupted operation reported as %s", op.Status)
	}
	t.Logf("interrupted operation: %s %q", op.Status, op.Err)
	// Nothing lost: c1 and v1 are as they were; c2 either finished or was rolled back entirely.
	assertStatus(t, d, "c1", api.StatusRunning)
	assertStatus(t, d, "v1", api.StatusRunning)
	for _, inst := range instances(t, d) {
		if inst.Name == "c2" && op.Status == api.OpFailure {
			t.Fatalf("failed launch left c2 behind: %+v", inst)
		}
	}

	d.must("stop", "c1", "--force")
	d.must("delete", "c1")
	d.must("delete", "v1", "--force")
	if n := len(instances(t, d)); n != 0 {
		t.Fatalf("%d instances left after delete", n)
	}
}

func instances(t *testing.T, d *daemonHarness) []api.Instance {
	t.Helper()
	var list []api.Instance
	if err := json.Unmarshal([]byte(d.must("list", "--format", "json")), &list); err != nil {
		t.Fatal(err)
	}
	return list
}

func assertStatus(t *testing.T, d *daemonHarness, name, want string) {
	t.Helper()
	var inst api.Instance
	if err := json.Unmarshal([]byte(d.must("info", name, "--format", "json")), &inst); err != nil {
		t.Fatal(err)
	}
	if inst.Status != want {
		t.Fatalf("%s is %s, want %s", name, inst.Status, want)
	}
}

// waitForRunningOperation returns the id of the running operation on an instance.
func waitForRunningOperation(t *testing.T, d *daemonHarness, name string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var ops []api.Operation
		json.Unmarshal([]byte(d.must("operation", "list", "--format", "json")), &ops)
		for _, op := range ops {
			if op.Status == api.OpRunning && len(op.Resources) == 1 && op.Resources[0] == "/1.0/instances/"+name {
				return op.ID
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no running operation on %s", name)
	return ""
}
