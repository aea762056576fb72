package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"tandem/api"
)

// fakeDaemon answers the routes of tandemd from memory, scripts operations through a few progress
// states, and records every request so that tests can check what the CLI sent.
type fakeDaemon struct {
	mu        sync.Mutex
	instances map[string]*api.Instance
	ops       map[string]*fakeOp
	reqs      []fakeReq
	nextOp    int
	// failWith makes the next operations end in Failure with this message.
	failWith string
}

type fakeReq struct {
	Method, Path, Query, Body string
}

// fakeOp walks through states, one per /wait call, and then stays on the last.
type fakeOp struct {
	states []api.Operation
	i      int
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func newFakeDaemon() *fakeDaemon {
	return &fakeDaemon{
		instances: map[string]*api.Instance{
			"v2": {Name: "v2", Type: api.TypeVM, Image: "debian", Status: api.StatusStopped, DesiredPower: api.PowerStopped,
				Driver: "qemu", CreatedAt: t0, Config: map[string]string{}, Devices: api.Devices{}},
			"c1": {Name: "c1", Type: api.TypeContainer, Image: "busybox", Status: api.StatusRunning, DesiredPower: api.PowerRunning,
				Driver: "runc", CreatedAt: t0, Config: map[string]string{"limits.cpu": "1"},
				Devices: api.Devices{"eth0": {"type": "nic", "network": "default"}}},
		},
		ops: map[string]*fakeOp{},
	}
}

// newOp scripts an operation: Pending, two Running steps, then Success (or Failure with failWith).
func (d *fakeDaemon) newOp(desc string) api.Operation {
	d.nextOp++
	id := fmt.Sprintf("op%d", d.nextOp)
	st := func(status string, pct int, msg string) api.Operation {
		return api.Operation{ID: id, Description: desc, Status: status, Progress: api.Progress{Percent: pct, Message: msg},
			CreatedAt: t0.Add(time.Duration(d.nextOp) * time.Second), UpdatedAt: t0.Add(time.Duration(pct) * time.Millisecond)}
	}
	end := st(api.OpSuccess, 100, "")
	if d.failWith != "" {
		end = st(api.OpFailure, 40, "")
		end.Err = d.failWith
	}
	op := &fakeOp{states: []api.Operation{
		st(api.OpPending, 0, ""), st(api.OpRunning, 30, "unpacking image"), st(api.OpRunning, 70, "starting"), end,
	}}
	d.ops[id] = op
	return op.states[0]
}

func (d *fakeDaemon) requests(method, path string) []fakeReq {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []fakeReq
	for _, r := range d.reqs {
		if r.Method == method && r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

func reply(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func replyErr(w http.ResponseWriter, code int, format string, args ...any) {
	reply(w, code, api.Error{Error: fmt.Sprintf(format, args...), Code: code})
}

func (d *fakeDaemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /1.0/instances", func(w http.ResponseWriter, r *http.Request) {
		list := []api.Instance{}
		for _, in := range d.instances {
			list = append(list, *in)
		}
		reply(w, 200, list) // map order: the CLI must sort
	})
	mux.HandleFunc("POST /1.0/instances", func(w http.ResponseWriter, r *http.Request) {
		var req api.InstancesPost
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			replyErr(w, 400, "bad body: %v", err)
			return
		}
		if _, ok := d.instances[req.Name]; ok {
			replyErr(w, 409, "instance %q already exists", req.Name)
			return
		}
		d.instances[req.Name] = &api.Instance{Name: req.Name, Type: req.Type, Image: req.Image, Config: req.Config, Devices: req.Devices}
		reply(w, 202, d.newOp("Creating instance"))
	})
	mux.HandleFunc("GET /1.0/instances/{name}", func(w http.ResponseWriter, r *http.Request) {
		if in, ok := d.instances[r.PathValue("name")]; ok {
			reply(w, 200, in)
			return
		}
		replyErr(w, 404, "instance %q not found", r.PathValue("name"))
	})
	mux.HandleFunc("PATCH /1.0/instances/{name}", func(w http.ResponseWriter, r *http.Request) {
		in, ok := d.instances[r.PathValue("name")]
		if !ok {
			replyErr(w, 404, "instance %q not found", r.PathValue("name"))
			return
		}
		var p api.InstancePatch
		if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
			replyErr(w, 400, "bad body: %v", err)
			return
		}
		for k, v := range p.Config {
			if v == nil {
				delete(in.Config, k)
			} else {
				in.Config[k] = *v
			}
		}
		for k, v := range p.Devices {
			if v == nil {
				delete(in.Devices, k)
			} else {
				in.Devices[k] = v
			}
		}
		reply(w, 200, in)
	})
	mux.HandleFunc("DELETE /1.0/instances/{name}", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := d.instances[r.PathValue("name")]; !ok {
			replyErr(w, 404, "instance %q not found", r.PathValue("name"))
			return
		}
		delete(d.instances, r.PathValue("name"))
		op := d.newOp("Deleting instance")
		op = d.ops[op.ID].states[3] // already finished when answered: the CLI must not need /wait
		reply(w, 202, op)
	})
	mux.HandleFunc("PUT /1.0/instances/{name}/state", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := d.instances[r.PathValue("name")]; !ok {
			replyErr(w, 404, "instance %q not found", r.PathValue("name"))
			return
		}
		reply(w, 202, d.newOp("Changing state"))
	})
	mux.HandleFunc("GET /1.0/operations", func(w http.ResponseWriter, r *http.Request) {
		list := []api.Operation{}
		for _, op := range d.ops {
			list = append(list, op.states[op.i])
		}
		reply(w, 200, list)
	})
	mux.HandleFunc("GET /1.0/operations/{id}", func(w http.ResponseWriter, r *http.Request) {
		if op, ok := d.ops[r.PathValue("id")]; ok {
			reply(w, 200, op.states[op.i])
			return
		}
		replyErr(w, 404, "operation %q not found", r.PathValue("id"))
	})
	mux.HandleFunc("GET /1.0/operations/{id}/wait", func(w http.ResponseWriter, r *http.Request) {
		op, ok := d.ops[r.PathValue("id")]
		if !ok {
			replyErr(w, 404, "operation %q not found", r.PathValue("id"))
			return
		}
		if r.URL.Query().Get("timeout") == "" {
			replyErr(w, 400, "wait without timeout")
			return
		}
		if op.i < len(op.states)-1 {
			op.i++
		}
		reply(w, 200, op.states[op.i])
	})
	mux.HandleFunc("DELETE /1.0/operations/{id}", func(w http.ResponseWriter, r *http.Request) {
		op, ok := d.ops[r.PathValue("id")]
		if !ok {
			replyErr(w, 404, "operation %q not found", r.PathValue("id"))
			return
		}
		if !op.states[op.i].MayCancel {
			replyErr(w, 409, "operation %s cannot be cancelled", r.PathValue("id"))
			return
		}
		reply(w, 200, op.states[op.i])
	})
	mux.HandleFunc("GET /1.0/host", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, api.Host{Hostname: "h1", Kernel: "6.18.0", Arch: "x86_64", CPU: api.HostCPU{Cores: 2},
			Memory:  api.HostMemory{Total: 24 << 30, Available: 20 << 30},
			KVM:     api.HostKVM{Present: true, Reason: "nested virtualisation hangs"},
			Drivers: []api.DriverInfo{{Name: "qemu", Type: api.TypeVM, Version: "7.2", Available: true}}})
	})
	mux.HandleFunc("GET /1.0/networks", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, []api.Network{
			{Name: "lab", Bridge: "lab", Subnet: "10.77.0.0/24", Gateway: "10.77.0.1", Uplink: "eth1", UsedBy: []string{"c1/eth0"}},
			{Name: "tandem0", Bridge: "tandem0", Subnet: "10.3.4.0/24", Gateway: "10.3.4.1", NAT: true, UsedBy: []string{}},
		})
	})
	mux.HandleFunc("POST /1.0/networks", func(w http.ResponseWriter, r *http.Request) {
		var req api.NetworksPost
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			replyErr(w, 400, "bad body: %v", err)
			return
		}
		reply(w, 201, api.Network{Name: req.Name, Bridge: req.Name, Subnet: req.Subnet, Uplink: req.Uplink, UsedBy: []string{}})
	})
	mux.HandleFunc("GET /1.0/instances/{name}/files", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s:%s\n", r.PathValue("name"), r.URL.Query().Get("path"))
	})
	mux.HandleFunc("GET /1.0/", func(w http.ResponseWriter, r *http.Request) {
		replyErr(w, 404, "no route for %s", r.URL.Path)
	})

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The event stream never ends, so it must not hold the lock the other routes take.
		if r.URL.Path == "/1.0/events" {
			d.events(w, r)
			return
		}
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		d.mu.Lock()
		defer d.mu.Unlock()
		d.reqs = append(d.reqs, fakeReq{r.Method, r.URL.Path, r.URL.RawQuery, string(b)})
		mux.ServeHTTP(w, r)
	})
}

func (d *fakeDaemon) events(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	d.reqs = append(d.reqs, fakeReq{r.Method, r.URL.Path, r.URL.RawQuery, ""})
	d.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	for i, name := range []string{"c1", "v2"} {
		md, _ := json.Marshal(api.LifecycleEvent{Action: "instance-started", Source: "/1.0/instances/" + name, Instance: name})
		_ = json.NewEncoder(w).Encode(api.Event{Type: api.EventLifecycle, Timestamp: t0.Add(time.Duration(i) * time.Second), Metadata: md})
	}
	w.(http.Flusher).Flush()
	<-r.Context().Done()
}

// startFake serves a fake daemon on <dir>/unix.socket, like tandemd, and returns it with dir.
func startFake(t *testing.T) (*fakeDaemon, string) {
	t.Helper()
	// Not t.TempDir: its test-named path can pass the 107-byte unix socket limit.
	dir, err := os.MkdirTemp("", "tcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, "unix.socket"))
	if err != nil {
		t.Fatal(err)
	}
	d := newFakeDaemon()
	srv := httptest.NewUnstartedServer(d.handler())
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return d, dir
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs one command line against dir with a deadline, so that a hung wait fails the test instead
// of hanging it. tty pretends stderr is a terminal.
func cli(t *testing.T, dir string, tty bool, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	a := newApp(&out, &errb)
	a.tty = tty
	code := execute(ctx, a, append([]string{"--dir", dir}, args...))
	if ctx.Err() != nil {
		t.Fatalf("tandem %v: hung until the test deadline", args)
	}
	return result{out.String(), errb.String(), code}
}
