package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/driver/fake"
	"tandem/internal/events"
	"tandem/internal/image"
	"tandem/internal/instance"
	"tandem/internal/operations"
	"tandem/internal/store"
	"tandem/internal/trust"
)

type testAPI struct {
	t      *testing.T
	s      *Server
	srv    *httptest.Server
	drv    *fake.Driver
	mgr    *instance.Manager
	images *image.Store
}

func newTestAPI(t *testing.T, delay ...time.Duration) *testAPI {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	hub := events.NewHub()
	ops := operations.NewManager(st, hub)
	opts := fake.Options{}
	if len(delay) > 0 {
		opts.Delay = delay[0]
	}
	drv, _ := fake.New(opts)
	reg := driver.NewRegistry()
	reg.Register("fake", drv, api.TypeContainer, api.TypeVM)
	mgr := instance.NewManager(st, reg, ops, hub, func() uint64 { return 8 << 30 })
	images, err := image.Open(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { images.Close() })
	s := &Server{Instances: mgr, Operations: ops, Events: hub, Drivers: reg, Images: images, Dir: dir}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		srv.Close()
		ops.Shutdown(5 * time.Second)
		st.Close()
	})
	return &testAPI{t: t, s: s, srv: srv, drv: drv, mgr: mgr, images: images}
}

// do sends a request with a raw body and returns the status and body.
func (a *testAPI) do(method, path string, body string) (int, []byte) {
	a.t.Helper()
	req, _ := http.NewRequest(method, a.srv.URL+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func (a *testAPI) wantError(method, path, body string, code int, contains string) {
	a.t.Helper()
	got, data := a.do(method, path, body)
	var e api.Error
	if err := json.Unmarshal(data, &e); err != nil {
		a.t.Fatalf("%s %s: error body is not JSON: %s", method, path, data)
	}
	if got != code || e.Code != code || !strings.Contains(e.Error, contains) {
		a.t.Errorf("%s %s %.60q: got %d %+v, want %d containing %q", method, path, body, got, e, code, contains)
	}
}

// launch creates (and starts) an instance and waits for the operation.
func (a *testAPI) launch(name string, start bool) {
	a.t.Helper()
	body, _ := json.Marshal(api.InstancesPost{Name: name, Type: api.TypeContainer, Image: "busybox", Start: start})
	code, data := a.do("POST", "/1.0/instances", string(body))
	if code != http.StatusAccepted {
		a.t.Fatalf("create %s: %d %s", name, code, data)
	}
	a.wait(data)
}

func (a *testAPI) wait(opJSON []byte) *api.Operation {
	a.t.Helper()
	var op api.Operation
	json.Unmarshal(opJSON, &op)
	_, data := a.do("GET", "/1.0/operations/"+op.ID+"/wait?timeout=10", "")
	json.Unmarshal(data, &op)
	if !op.Done() {
		a.t.Fatalf("operation %s not done: %+v", op.ID, op)
	}
	return &op
}

func TestBadNames(t *testing.T) {
	a := newTestAPI(t)
	for _, name := range []string{"a/b", "..", "a\x00b", strings.Repeat("a", 64), "Upper", "-dash", "", "sp ace", "ü"} {
		body, _ := json.Marshal(api.InstancesPost{Name: name, Type: "container", Image: "busybox"})
		a.wantError("POST", "/1.0/instances", string(body), 400, "instance name")
	}
	// The same names in the URL path.
	for _, name := range []string{"a%2Fb", "a%00b", strings.Repeat("a", 64), "Upper"} {
		a.wantError("GET", "/1.0/instances/"+name, "", 400, "instance name")
		a.wantError("PUT", "/1.0/instances/"+name+"/state", `{"action":"start"}`, 400, "instance name")
	}
	// A 63-character name is fine.
	a.launch(strings.Repeat("a", 63), false)
	if a.drv.Count() != 1 {
		t.Fatalf("driver has %d instances", a.drv.Count())
	}
}

func TestBadBodies(t *testing.T) {
	a := newTestAPI(t)
	a.wantError("POST", "/1.0/instances", `{"name":`, 400, "malformed")
	a.wantError("POST", "/1.0/instances", ``, 400, "empty")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x"} {"again":1}`, 400, "after the JSON")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","colour":"red"}`, 400, "unknown field")
	a.wantError("POST", "/1.0/instances", `[1,2]`, 400, "malformed")
	huge := `{"name":"c1","image":"` + strings.Repeat("x", 10<<20) + `"}`
	a.wantError("POST", "/1.0/instances", huge, 413, "larger than")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","type":"jail","image":"x"}`, 400, "instance type")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","type":"vm"}`, 400, "image is required")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","config":{"limits.colour":"red"}}`, 400, "unknown config key")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","config":{"limits.memory":"lots"}}`, 400, "limits.memory")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","config":{"limits.memory":"900PiB"}}`, 400, "more than this host")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","config":{"limits.cpu":"0"}}`, 400, "limits.cpu")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","config":{"volatile.x":"1"}}`, 400, "set by tandem")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","devices":{"eth0":{"type":"nic","colour":"red"}}}`, 400, "unknown key")
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"x","devices":{"d":{"type":"floppy"}}}`, 400, "unknown type")
	a.wantError("PUT", "/1.0/instances/c1/state", `{"action":"explode"}`, 400, "unknown action")
	a.wantError("DELETE", "/1.0/instances/c1?force=maybe", "", 400, "force")
	a.wantError("GET", "/1.0/operations/x/wait?timeout=soon", "", 400, "timeout")
	a.wantError("GET", "/1.0/events?type=gossip", "", 400, "event type")
	// None of that created anything.
	if a.drv.Count() != 0 {
		t.Fatalf("bad requests left %d instances", a.drv.Count())
	}
	_, data := a.do("GET", "/1.0/instances", "")
	if string(bytes.TrimSpace(data)) != "[]" {
		t.Fatalf("instances after bad requests: %s", data)
	}
}

func TestNotFoundAndConflict(t *testing.T) {
	a := newTestAPI(t)
	a.wantError("GET", "/1.0/instances/nope", "", 404, "not found")
	a.wantError("PUT", "/1.0/instances/nope/state", `{"action":"start"}`, 404, "not found")
	a.wantError("DELETE", "/1.0/instances/nope", "", 404, "not found")
	a.wantError("GET", "/1.0/operations/nope", "", 404, "not found")
	a.wantError("GET", "/1.0/nothing", "", 404, "no such endpoint")

	a.launch("c1", true)
	body, _ := json.Marshal(api.InstancesPost{Name: "c1", Image: "busybox"})
	a.wantError("POST", "/1.0/instances", string(body), 409, "already exists")
	a.wantError("PUT", "/1.0/instances/c1/state", `{"action":"start"}`, 409, "it is Running")
	a.wantError("DELETE", "/1.0/instances/c1", "", 409, "stop it first")
	a.wantError("PUT", "/1.0/instances/c1/state", `{"action":"resume"}`, 409, "it is Running")

	code, data := a.do("PUT", "/1.0/instances/c1/state", `{"action":"stop","timeout":5}`)
	if code != 202 {
		t.Fatalf("stop: %d %s", code, data)
	}
	if op := a.wait(data); op.Status != api.OpSuccess {
		t.Fatalf("stop op: %+v", op)
	}
	a.wantError("PUT", "/1.0/instances/c1/state", `{"action":"stop"}`, 409, "it is Stopped")
	a.wantError("DELETE", "/1.0/operations/"+opID(data), "", 409, "already finished")
}

func opID(data []byte) string {
	var op api.Operation
	json.Unmarshal(data, &op)
	return op.ID
}

func TestConfigPatchAndPut(t *testing.T) {
	a := newTestAPI(t)
	a.launch("c1", false)
	code, data := a.do("PATCH", "/1.0/instances/c1", `{"config":{"limits.memory":"256MiB","user.owner":"ops"}}`)
	if code != 200 {
		t.Fatalf("patch: %d %s", code, data)
	}
	code, data = a.do("PATCH", "/1.0/instances/c1", `{"config":{"user.owner":null}}`)
	var inst api.Instance
	json.Unmarshal(data, &inst)
	if code != 200 || inst.Config["limits.memory"] != "256MiB" || inst.Config["user.owner"] != "" {
		t.Fatalf("patch unset: %d %s", code, data)
	}
	a.wantError("PATCH", "/1.0/instances/c1", `{"config":{"limits.bogus":"1"}}`, 400, "unknown config key")
	// Devices need their backends: without storage a disk is refused, and nothing changes.
	a.wantError("PUT", "/1.0/instances/c1", `{"config":{},"devices":{"data":{"type":"disk","path":"/data","source":"vol1"}}}`, 503, "no storage")
	code, data = a.do("PUT", "/1.0/instances/c1", `{"config":{"limits.cpu":"0-1"},"devices":{}}`)
	inst = api.Instance{}
	json.Unmarshal(data, &inst)
	if code != 200 || inst.Config["limits.cpu"] != "0-1" || inst.Config["limits.memory"] != "" || len(inst.Devices) != 0 {
		t.Fatalf("put: %d %s", code, data)
	}
	// A refused change left the config as it was.
	_, data = a.do("GET", "/1.0/instances/c1", "")
	inst = api.Instance{}
	json.Unmarshal(data, &inst)
	if inst.Config["limits.cpu"] != "0-1" {
		t.Fatalf("config after refused patch: %+v", inst.Config)
	}
}

func TestLifecycleAndHost(t *testing.T) {
	a := newTestAPI(t)
	a.launch("c1", true)
	for _, action := range []string{"pause", "resume", "restart", "stop", "start"} {
		code, data := a.do("PUT", "/1.0/instances/c1/state", `{"action":"`+action+`"}`)
		if code != 202 {
			t.Fatalf("%s: %d %s", action, code, data)
		}
		if op := a.wait(data); op.Status != api.OpSuccess {
			t.Fatalf("%s: %+v", action, op)
		}
	}
	code, data := a.do("GET", "/1.0/host", "")
	var h api.Host
	json.Unmarshal(data, &h)
	if code != 200 || h.CPU.Cores < 1 || h.Memory.Total == 0 || h.Allocated.Running != 1 || len(h.Drivers) != 1 {
		t.Fatalf("host: %d %s", code, data)
	}
	if code, data := a.do("GET", "/1.0/host/orphans", ""); code != 200 || string(bytes.TrimSpace(data)) != "[]" {
		t.Fatalf("orphans of a host whose instances all have records: %d %s", code, data)
	}
	code, data = a.do("DELETE", "/1.0/instances/c1?force=true", "")
	if code != 202 || a.wait(data).Status != api.OpSuccess || a.drv.Count() != 0 {
		t.Fatalf("force delete: %d %s, %d left", code, data, a.drv.Count())
	}
}

func TestEventStream(t *testing.T) {
	a := newTestAPI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", a.srv.URL+"/1.0/events?type=lifecycle", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	a.launch("c1", true)
	dec := json.NewDecoder(resp.Body)
	var actions []string
	for len(actions) < 2 {
		var ev api.Event
		if err := dec.Decode(&ev); err != nil {
			t.Fatalf("event stream: %v", err)
		}
		var md api.LifecycleEvent
		json.Unmarshal(ev.Metadata, &md)
		actions = append(actions, md.Action)
	}
	if actions[0] != "instance-created" || actions[1] != "instance-started" {
		t.Fatalf("events %v", actions)
	}
}

func TestWaitTimeoutAndCancel(t *testing.T) {
	a := newTestAPI(t, time.Hour)
	body, _ := json.Marshal(api.InstancesPost{Name: "c1", Image: "busybox"})
	code, data := a.do("POST", "/1.0/instances", string(body))
	if code != 202 {
		t.Fatalf("create: %d %s", code, data)
	}
	id := opID(data)
	start := time.Now()
	_, data = a.do("GET", "/1.0/operations/"+id+"/wait?timeout=0.3", "")
	var op api.Operation
	json.Unmarshal(data, &op)
	if op.Done() || time.Since(start) > 5*time.Second {
		t.Fatalf("wait with timeout: %+v after %v", op, time.Since(start))
	}
	// A second operation on the busy instance gets 409 naming the holder.
	a.wantError("PUT", "/1.0/instances/c1/state", `{"action":"start"}`, 409, id)
	if code, data := a.do("DELETE", "/1.0/operations/"+id, ""); code != 200 {
		t.Fatalf("cancel: %d %s", code, data)
	}
	_, data = a.do("GET", "/1.0/operations/"+id+"/wait?timeout=10", "")
	op = api.Operation{}
	json.Unmarshal(data, &op)
	if op.Status != api.OpCancelled {
		t.Fatalf("after cancel: %+v", op)
	}
	// The cancelled create was rolled back.
	a.wantError("GET", "/1.0/instances/c1", "", 404, "not found")
	if a.drv.Count() != 0 {
		t.Fatal("cancelled create left driver state")
	}
}

func TestImageErrors(t *testing.T) {
	a := newTestAPI(t)
	a.wantError("POST", "/1.0/images", `{"build":"gentoo"}`, 400, "unknown image builder")
	a.wantError("POST", "/1.0/images", `{"url":"http://127.0.0.1:1/x.tar"}`, 400, "sha256")
	a.wantError("POST", "/1.0/images", `{"url":"http://x","build":"busybox"}`, 400, "not both")
	a.wantError("POST", "/1.0/images", `{}`, 400, "give url")
	a.wantError("GET", "/1.0/images/nope", "", 404, "not found")
	a.wantError("DELETE", "/1.0/images/nope", "", 404, "not found")
	a.wantError("POST", "/1.0/images/aliases", `{"name":"a/b","target":"x"}`, 400, "")

	// A garbage upload becomes a failed operation and leaves no image.
	req, _ := http.NewRequest("POST", a.srv.URL+"/1.0/images", strings.NewReader("garbage"))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 202 {
		t.Fatalf("upload: %d %s", resp.StatusCode, data)
	}
	if op := a.wait(data); op.Status != api.OpFailure || !strings.Contains(op.Err, "not an image") {
		t.Fatalf("garbage import: %+v", op)
	}
	_, data = a.do("GET", "/1.0/images", "")
	if string(bytes.TrimSpace(data)) != "[]" {
		t.Fatalf("images after a failed import: %s", data)
	}
	// Launching from an image that does not exist is a 404 before anything starts.
	a.mgr.SetImages(a.images)
	a.wantError("POST", "/1.0/instances", `{"name":"c1","image":"nope"}`, 404, "not found")
}

// Over TLS only trusted certificates get in, except to present a join token; the unix socket
// (root only) is the local administrator.
func TestTLSAuthorization(t *testing.T) {
	a := newTestAPI(t)
	dir := t.TempDir()
	serverCert, err := trust.EnsureKeyPair(t.TempDir(), "host")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, _ := trust.EnsureKeyPair(t.TempDir(), "client")
	trusted := trust.Trusted{Dir: filepath.Join(dir, "trust")}
	s := &Server{Instances: a.mgr, Operations: nil, Events: events.NewHub(), Drivers: driver.NewRegistry(),
		Trust: Trust{Trusted: trusted, Cert: serverCert}}
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.TLS = trusted.ServerConfig(serverCert)
	srv.StartTLS()
	defer srv.Close()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: trust.PinnedClientConfig(clientCert, trust.Fingerprint(serverCert.Certificate[0]))}}
	get := func(method, path string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader("{}"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("GET", "/1.0/instances"); code != http.StatusForbidden {
		t.Fatalf("untrusted list: %d", code)
	}
	// Presenting a (bad) token is the one thing an untrusted client may try.
	if code := get("POST", "/1.0/trust"); code != http.StatusBadRequest {
		t.Fatalf("untrusted join attempt: %d", code)
	}
	trusted.AddNamed(clientCert.Certificate[0], "client")
	if code := get("GET", "/1.0/instances"); code != http.StatusOK {
		t.Fatalf("trusted list: %d", code)
	}
	// Tokens are only issued to the local administrator, even for a trusted remote.
	if code := get("POST", "/1.0/trust/tokens"); code != http.StatusForbidden {
		t.Fatalf("remote token issue: %d", code)
	}
}

// Impossible sizes and reserved NIC names are 400 at once, not a 202 whose operation fails.
func TestImpossibleValuesAre400(t *testing.T) {
	a := newTestAPI(t)
	for _, c := range []struct {
		req  api.InstancesPost
		want string
	}{
		{api.InstancesPost{Config: map[string]string{"limits.disk": "18446744073709551615"}}, "limits.disk"},
		{api.InstancesPost{Devices: api.Devices{"eth1": {"type": "nic", "network": "tandem0", "name": "lo"}}}, "loopback"},
		{api.InstancesPost{Devices: api.Devices{"eth1": {"type": "nic", "network": "tandem0", "name": "default"}}}, "reserved"},
	} {
		c.req.Name, c.req.Type, c.req.Image = "c1", api.TypeContainer, "busybox"
		body, _ := json.Marshal(c.req)
		a.wantError("POST", "/1.0/instances", string(body), 400, c.want)
	}
	a.launch("c2", false)
	a.wantError("PATCH", "/1.0/instances/c2", `{"config":{"limits.disk":"18446744073709551615"}}`, 400, "1EiB")
}
