package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/api"
)

func TestMain(m *testing.M) {
	// Fake servers answer /wait at once; do not let pacing dominate the run time.
	minPollInterval = time.Millisecond
	os.Exit(m.Run())
}

// shortDir returns a fresh directory whose socket path stays under the unix limit, which t.TempDir
// (named after the test) does not promise.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// unixServer serves h on <dir>/unix.socket and returns a client for it.
func unixServer(t *testing.T, h http.Handler) *Client {
	t.Helper()
	dir := shortDir(t)
	l, err := net.Listen("unix", filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, api.Error{Error: msg, Code: code})
}

// request records what the fake server saw.
type request struct {
	Method, Path, Query string
	Body                string
}

func recorder(t *testing.T, reqs *[]request, mu *sync.Mutex, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		*reqs = append(*reqs, request{r.Method, r.URL.Path, r.URL.RawQuery, string(b)})
		mu.Unlock()
		h(w, r)
	})
}

func TestInstanceCallsOverUnixSocket(t *testing.T) {
	var mu sync.Mutex
	var reqs []request
	inst := api.Instance{Name: "c1", Type: api.TypeContainer, Image: "busybox", Status: api.StatusRunning}
	op := api.Operation{ID: "op1", Status: api.OpRunning}
	c := unixServer(t, recorder(t, &reqs, &mu, func(w http.ResponseWriter, r *http.Request) {
		switch r.Method + " " + r.URL.Path {
		case "GET /1.0":
			writeJSON(w, 200, map[string]any{"api_version": "1.0"})
		case "GET /1.0/instances":
			writeJSON(w, 200, []api.Instance{inst})
		case "GET /1.0/instances/c1", "PUT /1.0/instances/c1", "PATCH /1.0/instances/c1":
			writeJSON(w, 200, inst)
		case "POST /1.0/instances", "DELETE /1.0/instances/c1", "PUT /1.0/instances/c1/state":
			writeJSON(w, 202, op)
		case "GET /1.0/host":
			writeJSON(w, 200, api.Host{Hostname: "h1", CPU: api.HostCPU{Cores: 2}})
		default:
			writeErr(w, 404, "no route "+r.URL.Path)
		}
	}))
	ctx := ctxT(t)

	srv, err := c.GetServer(ctx)
	if err != nil || srv["api_version"] != "1.0" {
		t.Fatalf("GetServer = %v, %v", srv, err)
	}
	list, err := c.GetInstances(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "c1" {
		t.Fatalf("GetInstances = %v, %v", list, err)
	}
	got, err := c.GetInstance(ctx, "c1")
	if err != nil || got.Image != "busybox" {
		t.Fatalf("GetInstance = %v, %v", got, err)
	}
	o, err := c.CreateInstance(ctx, api.InstancesPost{Name: "c1", Type: api.TypeVM, Image: "busybox", Start: true})
	if err != nil || o.ID != "op1" {
		t.Fatalf("CreateInstance = %v, %v", o, err)
	}
	if _, err := c.UpdateInstance(ctx, "c1", api.InstancePut{Config: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PatchInstance(ctx, "c1", api.InstancePatch{
		Config:  map[string]*string{"gone": nil},
		Devices: map[string]map[string]string{"eth0": nil},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteInstance(ctx, "c1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateInstanceState(ctx, "c1", api.InstanceStatePut{Action: api.ActionStop, Timeout: 5, Force: true}); err != nil {
		t.Fatal(err)
	}
	h, err := c.GetHost(ctx)
	if err != nil || h.Hostname != "h1" || h.CPU.Cores != 2 {
		t.Fatalf("GetHost = %v, %v", h, err)
	}

	mu.Lock()
	defer mu.Unlock()
	want := map[string]func(request) bool{
		"POST /1.0/instances": func(r request) bool {
			return strings.Contains(r.Body, `"start":true`) && strings.Contains(r.Body, `"type":"vm"`)
		},
		"PUT /1.0/instances/c1":   func(r request) bool { return strings.Contains(r.Body, `"config":{"a":"b"}`) },
		"PATCH /1.0/instances/c1": func(r request) bool { return r.Body == `{"config":{"gone":null},"devices":{"eth0":null}}` },
		"DELETE /1.0/instances/c1": func(r request) bool {
			return r.Query == "force=true" && r.Body == ""
		},
		"PUT /1.0/instances/c1/state": func(r request) bool {
			return r.Body == `{"action":"stop","timeout":5,"force":true}`
		},
	}
	for _, r := range reqs {
		if check, ok := want[r.Method+" "+r.Path]; ok {
			if !check(r) {
				t.Errorf("%s %s?%s body %s: not what was sent", r.Method, r.Path, r.Query, r.Body)
			}
			delete(want, r.Method+" "+r.Path)
		}
	}
	for k := range want {
		t.Errorf("%s never reached the server", k)
	}
}

func TestNameIsEscaped(t *testing.T) {
	var path string
	c := unixServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path = r.URL.EscapedPath()
		writeErr(w, 404, "not found")
	}))
	_, _ = c.GetInstance(ctxT(t), "a/b?c")
	if path != "/1.0/instances/a%2Fb%3Fc" {
		t.Fatalf("path = %q", path)
	}
	if _, err := c.GetInstance(ctxT(t), ""); err == nil {
		t.Fatal("empty name accepted")
	}
}

func TestErrorMapping(t *testing.T) {
	c := unixServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/1.0/instances/missing":
			writeErr(w, 404, `instance "missing" not found`)
		case "/1.0/instances/text":
			http.Error(w, "plain failure", 500)
		case "/1.0/instances/empty":
			w.WriteHeader(502)
		case "/1.0/instances/big":
			w.WriteHeader(500)
			// An error body past the limit must not be read whole, nor break the mapping.
			fmt.Fprint(w, strings.Repeat("x", maxErrorBody*2))
		case "/1.0/instances/garbage":
			writeJSON(w, 200, "not an instance")
		}
	}))
	ctx := ctxT(t)

	_, err := c.GetInstance(ctx, "missing")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 404 || err.Error() != `instance "missing" not found` {
		t.Fatalf("err = %#v", err)
	}
	if !IsStatus(err, 404) || IsStatus(err, 409) {
		t.Fatal("IsStatus wrong")
	}
	if _, err := c.GetInstance(ctx, "text"); err == nil || err.Error() != "plain failure" || !IsStatus(err, 500) {
		t.Fatalf("text err = %v", err)
	}
	if _, err := c.GetInstance(ctx, "empty"); err == nil || err.Error() != "bad gateway" || !IsStatus(err, 502) {
		t.Fatalf("empty err = %v", err)
	}
	if _, err := c.GetInstance(ctx, "big"); err == nil || len(err.Error()) > maxErrorBody || !IsStatus(err, 500) {
		t.Fatalf("big err length %d", len(err.Error()))
	}
	if _, err := c.GetInstance(ctx, "garbage"); err == nil || !strings.Contains(err.Error(), "invalid response") {
		t.Fatalf("garbage err = %v", err)
	}
}

func TestDaemonNotRunning(t *testing.T) {
	dir := shortDir(t)
	c, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetInstances(ctxT(t))
	want := "cannot reach tandemd at " + filepath.Join(dir, "unix.socket") + ": is it running?"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %q", err, want)
	}
	if !errors.Is(err, ErrUnreachable) {
		t.Fatal("not ErrUnreachable")
	}
}

func TestSocketPathTooLong(t *testing.T) {
	if _, err := New("/" + strings.Repeat("d", 100)); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("err = %v", err)
	}
	if _, err := New("/" + strings.Repeat("d", 107-len("/unix.socket")-1)); err != nil {
		t.Fatalf("a 107-byte path must be accepted: %v", err)
	}
}

// opScript serves /wait with each state in turn, holding the last one.
func opScript(t *testing.T, states []api.Operation, queries *[]string) http.Handler {
	var mu sync.Mutex
	i := 0
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/1.0/operations/op1/wait" {
			writeErr(w, 404, "no route")
			return
		}
		mu.Lock()
		*queries = append(*queries, r.URL.RawQuery)
		s := states[min(i, len(states)-1)]
		i++
		mu.Unlock()
		writeJSON(w, 200, s)
	})
}

func TestWaitOperationProgress(t *testing.T) {
	run := func(p int, st string) api.Operation {
		return api.Operation{ID: "op1", Status: st, Progress: api.Progress{Percent: p, Message: fmt.Sprint(p)}}
	}
	states := []api.Operation{
		run(0, api.OpPending), run(10, api.OpRunning), run(10, api.OpRunning), run(60, api.OpRunning), run(100, api.OpSuccess),
	}
	var queries []string
	c := unixServer(t, opScript(t, states, &queries))
	var seen []int
	op, err := c.WaitOperation(ctxT(t), "op1", func(o *api.Operation) { seen = append(seen, o.Progress.Percent) })
	if err != nil || op.Status != api.OpSuccess {
		t.Fatalf("WaitOperation = %v, %v", op, err)
	}
	// The repeated 10% state is not reported twice.
	if fmt.Sprint(seen) != "[0 10 60 100]" {
		t.Fatalf("progress seen = %v", seen)
	}
	if len(queries) != 5 || queries[0] != "timeout=1" {
		t.Fatalf("queries = %v", queries)
	}
}

func TestWaitOperationFailureAndCancel(t *testing.T) {
	for _, st := range []string{api.OpFailure, api.OpCancelled} {
		var q []string
		c := unixServer(t, opScript(t, []api.Operation{
			{ID: "op1", Status: api.OpRunning},
			{ID: "op1", Status: st, Err: "qemu exited: boom"},
		}, &q))
		op, err := c.WaitOperation(ctxT(t), "op1", nil)
		var oe *OperationError
		if !errors.As(err, &oe) || oe.Status != st || err.Error() != "qemu exited: boom" || op == nil || op.Status != st {
			t.Fatalf("%s: op %v err %#v", st, op, err)
		}
	}
}

func TestWaitOperationHonoursContext(t *testing.T) {
	var q []string
	c := unixServer(t, opScript(t, []api.Operation{{ID: "op1", Status: api.OpRunning}}, &q))
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.WaitOperation(ctx, "op1", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatal("WaitOperation overran its context")
	}
}

func TestGetOperationNotFound(t *testing.T) {
	var q []string
	c := unixServer(t, opScript(t, nil, &q))
	_, err := c.GetOperation(ctxT(t), "op2")
	if !IsStatus(err, 404) {
		t.Fatalf("err = %v", err)
	}
}

func TestEventsStream(t *testing.T) {
	var gotQuery string
	c := unixServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQuery = r.URL.Query().Get("type")
		w.Header().Set("Content-Type", "application/json")
		fl := w.(http.Flusher)
		for i := range 3 {
			md, _ := json.Marshal(api.LifecycleEvent{Action: "instance-started", Instance: fmt.Sprint("c", i)})
			_ = json.NewEncoder(w).Encode(api.Event{Type: api.EventLifecycle, Timestamp: time.Now(), Metadata: md})
			fmt.Fprint(w, "\n") // a keep-alive blank line must be skipped
			fl.Flush()
		}
		<-r.Context().Done() // never ends on its own, like the daemon's
	}))

	stop := errors.New("enough")
	var names []string
	err := c.GetEvents(ctxT(t), []string{api.EventLifecycle, api.EventOperation}, func(ev api.Event) error {
		var lc api.LifecycleEvent
		if err := json.Unmarshal(ev.Metadata, &lc); err != nil {
			return err
		}
		names = append(names, lc.Instance)
		if len(names) == 3 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("err = %v", err)
	}
	if fmt.Sprint(names) != "[c0 c1 c2]" || gotQuery != "lifecycle,operation" {
		t.Fatalf("names %v query %q", names, gotQuery)
	}

	// A context that ends while the stream is idle ends GetEvents with the context's error.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = c.GetEvents(ctx, nil, func(api.Event) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

func TestEventsStreamClosed(t *testing.T) {
	c := unixServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, `{"type":"operation","metadata":{}}`)
	}))
	n := 0
	err := c.GetEvents(ctxT(t), nil, func(api.Event) error { n++; return nil })
	if !errors.Is(err, ErrEventStreamClosed) || n != 1 {
		t.Fatalf("err = %v, n = %d", err, n)
	}
}

func TestHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 200, map[string]any{"api_version": "1.0"})
	}))
	defer srv.Close()
	tr := srv.Client().Transport.(*http.Transport)
	c, err := NewHTTPS(srv.URL, tr.TLSClientConfig.Clone())
	if err != nil {
		t.Fatal(err)
	}
	if s, err := c.GetServer(ctxT(t)); err != nil || s["api_version"] != "1.0" {
		t.Fatalf("GetServer = %v, %v", s, err)
	}
	if _, err := NewHTTPS("http://x", &tls.Config{}); err == nil {
		t.Fatal("http url accepted")
	}
}
