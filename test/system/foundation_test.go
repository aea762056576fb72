package system

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"tandem/api"
	"tandem/internal/testenv"
)

// The whole control plane through the CLI, with the fake driver: launch, list in three formats, stop,
// start, delete, bad input, and a SIGKILL of the daemon in the middle of a slow operation.
func TestFoundationThroughCLI(t *testing.T) {
	testenv.Require(t, "busybox")
	d := startDaemon(t, "--driver", "fake", "--fake-delay", "400ms", "--network=false")
	d.must("image", "build", "busybox")

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

	// exec passes output, stdin and exit codes through; console shows what the instance prints.
	if out := d.must("exec", "c1", "--", "echo", "hello", "world"); out != "hello world\n" {
		t.Fatalf("exec echo: %q", out)
	}
	for _, code := range []int{0, 1, 42} {
		_, _, err := d.tandem("exec", "c1", "--", "exit", fmt.Sprint(code))
		if got := exitCode(err); got != code {
			t.Fatalf("exec exit %d: got %d (%v)", code, got, err)
		}
	}
	cat := exec.Command(filepath.Join(binaries(t), "tandem"), "--dir", d.dir, "exec", "v1", "--", "cat")
	cat.Stdin = strings.NewReader("piped through\n")
	if out, err := cat.Output(); err != nil || string(out) != "piped through\n" {
		t.Fatalf("exec stdin: %q %v", out, err)
	}
	if out := d.must("console", "c1", "--show-log"); !strings.Contains(out, "fake console of c1") {
		t.Fatalf("console log: %q", out)
	}
	attachConsoleAndType(t, d, "c1")

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

// The image round trip of the images issue: build, export, delete, import back with the same
// fingerprint, launch from it; and a hostile file leaves nothing behind.
func TestImageRoundTrip(t *testing.T) {
	testenv.Require(t, "busybox")
	d := startDaemon(t, "--driver", "fake", "--network=false")
	d.must("image", "build", "busybox")
	var img api.Image
	json.Unmarshal([]byte(d.must("image", "info", "busybox", "--format", "json")), &img)
	if len(img.Fingerprint) != 64 || img.OS != "busybox" {
		t.Fatalf("built image: %+v", img)
	}
	file := filepath.Join(t.TempDir(), "busybox.tar")
	d.must("image", "export", "busybox", file)
	d.must("image", "delete", "busybox")
	if _, _, err := d.tandem("image", "info", img.Fingerprint); err == nil {
		t.Fatal("deleted image still there")
	}
	d.must("image", "import", file, "--alias", "bb")
	var back api.Image
	json.Unmarshal([]byte(d.must("image", "info", "bb", "--format", "json")), &back)
	if back.Fingerprint != img.Fingerprint {
		t.Fatalf("re-imported fingerprint %s, exported %s", back.Fingerprint, img.Fingerprint)
	}
	d.must("launch", "bb", "c1")
	if _, errOut, err := d.tandem("image", "delete", "bb"); err == nil || !strings.Contains(errOut, "in use") {
		t.Fatalf("deleting an image in use: %v %s", err, errOut)
	}

	hostile := filepath.Join(t.TempDir(), "hostile.tar")
	os.WriteFile(hostile, []byte("not an image at all"), 0o600)
	if _, errOut, err := d.tandem("image", "import", hostile); err == nil || !strings.Contains(errOut, "Error: ") {
		t.Fatalf("hostile import: %v %q", err, errOut)
	}
	var imgs []api.Image
	json.Unmarshal([]byte(d.must("image", "list", "--format", "json")), &imgs)
	if len(imgs) != 1 {
		t.Fatalf("after a failed import: %d images", len(imgs))
	}
}

// attachConsoleAndType types into an instance's console, waits for the echo, then detaches.
func attachConsoleAndType(t *testing.T, d *daemonHarness, name string) {
	t.Helper()
	console := exec.Command(filepath.Join(binaries(t), "tandem"), "--dir", d.dir, "console", name)
	stdin, _ := console.StdinPipe()
	stdout, _ := console.StdoutPipe()
	if err := console.Start(); err != nil {
		t.Fatal(err)
	}
	defer console.Process.Kill()
	io.WriteString(stdin, "typed\n")
	seen := make(chan string, 1)
	go func() {
		var got []byte
		buf := make([]byte, 4096)
		for !bytes.Contains(got, []byte("typed")) {
			n, err := stdout.Read(buf)
			if err != nil {
				break
			}
			got = append(got, buf[:n]...)
		}
		seen <- string(got)
	}()
	select {
	case got := <-seen:
		if !strings.Contains(got, "typed") {
			t.Fatalf("console never echoed: %q", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("console: no echo within 20s")
	}
	io.WriteString(stdin, "\x01q") // detach
	done := make(chan error, 1)
	go func() { done <- console.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("console detach: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("console did not detach on Ctrl-a q")
	}
}

// exitCode is the exit status of a finished command (0 when err is nil).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
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
