package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"tandem/api"
)

func TestListFormats(t *testing.T) {
	_, dir := startFake(t)

	r := cli(t, dir, false, "list")
	want := "" +
		"NAME  TYPE       STATUS   IPV4  IMAGE    DESIRED\n" +
		"c1    container  Running  -     busybox  running\n" +
		"v2    vm         Stopped  -     debian   stopped\n"
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Fatalf("list: code %d\nstdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
	}

	r = cli(t, dir, false, "list", "--format", "json")
	var list []api.Instance
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("json: code %d out %q", r.code, r.stdout)
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 2 || list[0].Name != "c1" || list[1].Name != "v2" {
		t.Fatalf("json: %v %+v", err, list)
	}

	r = cli(t, dir, false, "--format=yaml", "list")
	list = nil
	if err := yaml.Unmarshal([]byte(r.stdout), &list); err != nil || r.code != 0 || len(list) != 2 || list[0].Name != "c1" ||
		list[0].Devices["eth0"]["network"] != "default" {
		t.Fatalf("yaml: %v code %d\n%s", err, r.code, r.stdout)
	}
}

func TestLaunchWaitsForOperation(t *testing.T) {
	d, dir := startFake(t)
	r := cli(t, dir, false, "launch", "busybox", "v1", "--vm", "-c", "limits.cpu=2", "-c", "user.note=a,b",
		"--device", "eth0,type=nic,network=lab")
	if r.code != 0 || r.stdout != "Launched v1\n" || r.stderr != "" {
		t.Fatalf("launch: %+v", r)
	}
	posts := d.requests("POST", "/1.0/instances")
	if len(posts) != 1 {
		t.Fatalf("posts: %v", posts)
	}
	var got api.InstancesPost
	if err := json.Unmarshal([]byte(posts[0].Body), &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "v1" || got.Image != "busybox" || got.Type != api.TypeVM || !got.Start ||
		got.Config["limits.cpu"] != "2" || got.Config["user.note"] != "a,b" || got.Devices["eth0"]["network"] != "lab" {
		t.Fatalf("POST body: %s", posts[0].Body)
	}
	// Pending -> Running 30 -> Running 70 -> Success: the CLI must have followed it to the end.
	waits := d.requests("GET", "/1.0/operations/op1/wait")
	if len(waits) != 3 || waits[0].Query != "timeout=1" {
		t.Fatalf("waits: %v", waits)
	}

	r = cli(t, dir, false, "create", "busybox", "c9")
	if r.code != 0 || r.stdout != "Created c9\n" {
		t.Fatalf("create: %+v", r)
	}
	if b := d.requests("POST", "/1.0/instances")[1].Body; strings.Contains(b, `"start"`) || !strings.Contains(b, `"type":"container"`) {
		t.Fatalf("create body: %s", b)
	}
}

func TestLaunchProgressBarOnTerminal(t *testing.T) {
	_, dir := startFake(t)
	r := cli(t, dir, true, "launch", "busybox", "c2")
	if r.code != 0 || r.stdout != "Launched c2\n" {
		t.Fatalf("launch: %+v", r)
	}
	// The bar goes to stderr only, and carries the operation's messages.
	if !strings.Contains(r.stderr, "Launching c2") || !strings.Contains(r.stderr, "%") {
		t.Fatalf("no progress bar on stderr: %q", r.stderr)
	}
}

func TestLaunchFailedOperation(t *testing.T) {
	d, dir := startFake(t)
	d.failWith = "image \"nope\" not found"
	r := cli(t, dir, false, "launch", "nope", "c3")
	if r.code != 1 || r.stderr != "Error: image \"nope\" not found\n" || r.stdout != "" {
		t.Fatalf("%+v", r)
	}
}

func TestErrors(t *testing.T) {
	_, dir := startFake(t)
	empty, err := os.MkdirTemp("", "tcli")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(empty)

	cases := []struct {
		dir  string
		args []string
		want string
	}{
		{dir, []string{"info", "missing"}, `Error: instance "missing" not found`},
		{dir, []string{"launch", "busybox", "c1"}, `Error: instance "c1" already exists`},
		{dir, []string{"launch", "busybox"}, "Error: wrong number of arguments (1); usage: tandem launch IMAGE NAME"},
		{dir, []string{"info"}, "Error: wrong number of arguments (0); usage: tandem info NAME"},
		{dir, []string{"list", "extra"}, "Error: wrong number of arguments (1); usage: tandem list"},
		{dir, []string{"list", "--format", "xml"}, `Error: invalid --format "xml": want table, json or yaml`},
		{dir, []string{"launch", "busybox", "c5", "-d", "eth0,network=x"}, `Error: invalid device "eth0,network=x": missing type= (nic, disk, ...)`},
		{dir, []string{"config", "set", "c1", "novalue"}, `Error: invalid "novalue": want key=value`},
		{dir, []string{"stop", "c1", "--timeout", "-1"}, `Error: invalid --timeout -1: want seconds >= 0`},
		{dir, []string{"lst"}, `Error: unknown command "lst" for "tandem"; did you mean "host" or "list"? (see 'tandem --help')`},
		{dir, []string{"config", "device", "remove", "c1", "nope"}, `Error: device "nope" not found on c1`},
		{dir, []string{"config", "device", "add", "c1", "eth0", "nic"}, `Error: device "eth0" already exists on c1`},
		{dir, []string{"operation", "cancel", "op404"}, `Error: operation "op404" not found`},
		{empty, []string{"list"}, "Error: cannot reach tandemd at " + filepath.Join(empty, "unix.socket") + ": is it running?"},
	}
	for _, c := range cases {
		r := cli(t, c.dir, false, c.args...)
		if r.code != 1 || r.stderr != c.want+"\n" || r.stdout != "" {
			t.Errorf("tandem %v: code %d stdout %q stderr %q, want %q", c.args, r.code, r.stdout, r.stderr, c.want)
		}
	}
}

func TestConfigSetUnset(t *testing.T) {
	d, dir := startFake(t)
	if r := cli(t, dir, false, "config", "set", "c1", "limits.memory=1GiB", "limits.cpu=2"); r.code != 0 || r.stdout != "" {
		t.Fatalf("set: %+v", r)
	}
	if r := cli(t, dir, false, "config", "set", "c1", "user.motd", "hello world"); r.code != 0 {
		t.Fatalf("set two-word: %+v", r)
	}
	if r := cli(t, dir, false, "config", "unset", "c1", "limits.cpu"); r.code != 0 {
		t.Fatalf("unset: %+v", r)
	}
	patches := d.requests("PATCH", "/1.0/instances/c1")
	want := []string{
		`{"config":{"limits.cpu":"2","limits.memory":"1GiB"}}`,
		`{"config":{"user.motd":"hello world"}}`,
		// null, not "" nor an absent key: that is how PATCH removes.
		`{"config":{"limits.cpu":null}}`,
	}
	if len(patches) != len(want) {
		t.Fatalf("patches: %v", patches)
	}
	for i, p := range patches {
		if strings.TrimSpace(p.Body) != want[i] {
			t.Errorf("PATCH %d body %s, want %s", i, p.Body, want[i])
		}
	}

	if r := cli(t, dir, false, "config", "get", "c1", "limits.memory"); r.stdout != "1GiB\n" {
		t.Fatalf("get: %+v", r)
	}
	if r := cli(t, dir, false, "config", "get", "c1", "limits.cpu"); r.code != 0 || r.stdout != "\n" {
		t.Fatalf("get unset key: %+v", r)
	}
	r := cli(t, dir, false, "config", "show", "c1")
	var shown instanceConfig
	if err := yaml.Unmarshal([]byte(r.stdout), &shown); err != nil || shown.Config["user.motd"] != "hello world" ||
		shown.Devices["eth0"]["type"] != "nic" {
		t.Fatalf("show: %v\n%s", err, r.stdout)
	}
}

func TestConfigDevices(t *testing.T) {
	d, dir := startFake(t)
	if r := cli(t, dir, false, "config", "device", "add", "c1", "data1", "disk", "pool=default", "source=data1"); r.code != 0 ||
		r.stdout != "Device data1 added to c1\n" {
		t.Fatalf("add: %+v", r)
	}
	if r := cli(t, dir, false, "config", "device", "remove", "c1", "eth0"); r.code != 0 {
		t.Fatalf("remove: %+v", r)
	}
	patches := d.requests("PATCH", "/1.0/instances/c1")
	if len(patches) != 2 ||
		strings.TrimSpace(patches[0].Body) != `{"devices":{"data1":{"pool":"default","source":"data1","type":"disk"}}}` ||
		strings.TrimSpace(patches[1].Body) != `{"devices":{"eth0":null}}` {
		t.Fatalf("patches: %v", patches)
	}
	r := cli(t, dir, false, "config", "device", "list", "c1")
	if r.stdout != "NAME   TYPE  SETTINGS\ndata1  disk  pool=default,source=data1\n" {
		t.Fatalf("list:\n%s", r.stdout)
	}
}

func TestStateAndDelete(t *testing.T) {
	d, dir := startFake(t)
	if r := cli(t, dir, false, "stop", "c1", "v2", "--force", "--timeout", "5"); r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("stop: %+v", r)
	}
	for _, name := range []string{"c1", "v2"} {
		puts := d.requests("PUT", "/1.0/instances/"+name+"/state")
		if len(puts) != 1 || strings.TrimSpace(puts[0].Body) != `{"action":"stop","timeout":5,"force":true}` {
			t.Fatalf("%s: %v", name, puts)
		}
	}
	if r := cli(t, dir, false, "start", "c1"); r.code != 0 {
		t.Fatalf("start: %+v", r)
	}
	if r := cli(t, dir, false, "delete", "--force", "c1"); r.code != 0 {
		t.Fatalf("delete: %+v", r)
	}
	if dels := d.requests("DELETE", "/1.0/instances/c1"); len(dels) != 1 || dels[0].Query != "force=true" {
		t.Fatalf("delete: %v", dels)
	}
	// An operation already finished in the 202 answer needs no /wait.
	if w := d.requests("GET", "/1.0/operations/op4/wait"); len(w) != 0 {
		t.Fatalf("waited on a finished operation: %v", w)
	}
	// The first failure stops the run with one error line.
	r := cli(t, dir, false, "pause", "ghost", "v2")
	if r.code != 1 || r.stderr != "Error: instance \"ghost\" not found\n" || len(d.requests("PUT", "/1.0/instances/v2/state")) != 1 {
		t.Fatalf("pause: %+v", r)
	}
}

func TestOperations(t *testing.T) {
	_, dir := startFake(t)
	cli(t, dir, false, "start", "v2")
	r := cli(t, dir, false, "operation", "list")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "ID   DESCRIPTION     STATUS   PROGRESS  RESOURCES  CREATED\nop1  Changing state  Success  100%") {
		t.Fatalf("list:\n%s", r.stdout)
	}
	r = cli(t, dir, false, "operation", "show", "op1", "--format", "json")
	var op api.Operation
	if err := json.Unmarshal([]byte(r.stdout), &op); err != nil || op.Status != api.OpSuccess {
		t.Fatalf("show: %v %s", err, r.stdout)
	}
	if r := cli(t, dir, false, "op", "wait", "op1"); r.code != 0 || r.stdout != "" {
		t.Fatalf("wait: %+v", r)
	}
	if r := cli(t, dir, false, "operation", "cancel", "op1"); r.code != 1 || r.stderr != "Error: operation op1 cannot be cancelled\n" {
		t.Fatalf("cancel: %+v", r)
	}
}

func TestEvents(t *testing.T) {
	d, dir := startFake(t)
	// events never ends on its own: stop it with the context, as Ctrl-C would.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out, errb bytes.Buffer
	code := execute(ctx, newApp(&out, &errb), []string{"--dir", dir, "events", "--type", "lifecycle,operation"})
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if code != 0 || errb.String() != "" || len(lines) != 2 {
		t.Fatalf("code %d stdout %q stderr %q", code, out.String(), errb.String())
	}
	var ev api.Event
	if err := json.Unmarshal([]byte(lines[1]), &ev); err != nil || ev.Type != api.EventLifecycle || !strings.Contains(string(ev.Metadata), `"v2"`) {
		t.Fatalf("event %q: %v", lines[1], err)
	}
	if q := d.requests("GET", "/1.0/events"); len(q) != 1 || q[0].Query != "type=lifecycle%2Coperation" {
		t.Fatalf("events query: %v", q)
	}
}

func TestHostInfo(t *testing.T) {
	_, dir := startFake(t)
	r := cli(t, dir, false, "host", "info")
	for _, want := range []string{"Hostname: h1\n", "CPU: 2 cores\n", "Memory: 20GiB available of 24GiB\n",
		"KVM: present, not usable (nested virtualisation hangs)\n", "  qemu (vm) 7.2: available\n", "  criu: not found\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("host info lacks %q:\n%s", want, r.stdout)
		}
	}
	r = cli(t, dir, false, "host", "info", "--format", "json")
	var h api.Host
	if err := json.Unmarshal([]byte(r.stdout), &h); err != nil || h.Hostname != "h1" {
		t.Fatalf("json: %v %s", err, r.stdout)
	}
}

func TestInfoReadable(t *testing.T) {
	_, dir := startFake(t)
	r := cli(t, dir, false, "info", "c1")
	for _, want := range []string{"Name: c1\n", "Type: container\n", "Status: Running\n", "Config:\n  limits.cpu: 1\n",
		"Devices:\n  eth0:\n    network: default\n    type: nic\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("info lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestRun goes through the real entry point, environment included.
func TestRun(t *testing.T) {
	_, dir := startFake(t)
	t.Setenv("TANDEM_DIR", dir)
	var out, errb bytes.Buffer
	if code := run([]string{"list", "--format", "json"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "[{") {
		t.Fatalf("code %d stdout %q stderr %q", code, out.String(), errb.String())
	}
}

func TestProgressLabel(t *testing.T) {
	for _, tc := range []struct {
		p    api.Progress
		want string
	}{
		{api.Progress{Percent: 40}, "Moving c1 to b"},
		{api.Progress{Stage: "memory", Message: "memory: 12MiB sent, 3MiB remaining"}, "Moving c1 to b: memory: 12MiB sent, 3MiB remaining"},
		{api.Progress{Stage: "dump", Bytes: 12 << 20, TotalBytes: 40 << 20}, "Moving c1 to b: dump: 12MiB of 40MiB"},
		{api.Progress{Stage: "memory", Bytes: 5 << 20}, "Moving c1 to b: memory: 5MiB"},
		{api.Progress{Stage: "restore"}, "Moving c1 to b: restore"},
	} {
		if got := progressLabel("Moving c1 to b", tc.p); got != tc.want {
			t.Errorf("progressLabel(%+v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}
