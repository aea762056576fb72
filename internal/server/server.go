package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/events"
	"tandem/internal/hostinfo"
	"tandem/internal/image"
	"tandem/internal/instance"
	"tandem/internal/migrate"
	"tandem/internal/network"
	"tandem/internal/operations"
	"tandem/internal/storage"
)

// Server holds what the handlers need.
type Server struct {
	Instances  *instance.Manager
	Operations *operations.Manager
	Events     *events.Hub
	Drivers    *driver.Registry
	// Networks is nil when networking is off.
	Networks   *network.Manager
	Storage    *storage.Manager
	Images     *image.Store
	ImageCache *image.RootfsCache
	Trust      Trust
	// Migrations is nil when this daemon does not move instances (the fake driver's tests).
	Migrations *migrate.Engine
	Dir        string

	hostMu   sync.Mutex
	hostAt   time.Time
	hostSeen api.Host
}

// Handler returns the API's router.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /1.0", s.getRoot)
	mux.HandleFunc("GET /1.0/instances", s.listInstances)
	mux.HandleFunc("POST /1.0/instances", s.createInstance)
	mux.HandleFunc("GET /1.0/instances/{name}", s.getInstance)
	mux.HandleFunc("PUT /1.0/instances/{name}", s.putInstance)
	mux.HandleFunc("PATCH /1.0/instances/{name}", s.patchInstance)
	mux.HandleFunc("DELETE /1.0/instances/{name}", s.deleteInstance)
	mux.HandleFunc("PUT /1.0/instances/{name}/state", s.putInstanceState)
	mux.HandleFunc("GET /1.0/operations", s.listOperations)
	mux.HandleFunc("GET /1.0/operations/{id}", s.getOperation)
	mux.HandleFunc("GET /1.0/operations/{id}/wait", s.waitOperation)
	mux.HandleFunc("DELETE /1.0/operations/{id}", s.cancelOperation)
	mux.HandleFunc("GET /1.0/events", s.streamEvents)
	mux.HandleFunc("GET /1.0/host", s.getHost)
	s.registerNetworks(mux)
	s.registerStorage(mux)
	s.registerSnapshots(mux)
	s.registerImages(mux)
	s.registerExec(mux)
	s.registerTrust(mux)
	s.registerFiles(mux)
	s.registerMigrations(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errdefs.NotFound("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.authorize(mux)
}

func (s *Server) getRoot(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"api_version": "1.0", "server": "tandemd"})
}

func (s *Server) listInstances(w http.ResponseWriter, r *http.Request) {
	list, err := s.Instances.List(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) createInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstancesPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	op, err := s.Instances.Create(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func (s *Server) getInstance(w http.ResponseWriter, r *http.Request) {
	inst, err := s.Instances.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) putInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstancePut
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	inst, err := s.Instances.Update(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) patchInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstancePatch
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	inst, err := s.Instances.Patch(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, inst)
}

func (s *Server) deleteInstance(w http.ResponseWriter, r *http.Request) {
	force, err := boolParam(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	op, err := s.Instances.Delete(r.Context(), r.PathValue("name"), force)
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func (s *Server) putInstanceState(w http.ResponseWriter, r *http.Request) {
	var req api.InstanceStatePut
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	op, err := s.Instances.ChangeState(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func (s *Server) listOperations(w http.ResponseWriter, r *http.Request) {
	ops, err := s.Operations.List()
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ops)
}

func (s *Server) getOperation(w http.ResponseWriter, r *http.Request) {
	op, err := s.Operations.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, op)
}

func (s *Server) waitOperation(w http.ResponseWriter, r *http.Request) {
	timeout := -1 * time.Second
	if v := r.URL.Query().Get("timeout"); v != "" {
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil {
			writeError(w, errdefs.Invalid("timeout %q is not a number of seconds", v))
			return
		}
		if secs >= 0 {
			timeout = time.Duration(secs * float64(time.Second))
		}
	}
	op, err := s.Operations.Wait(r.Context(), r.PathValue("id"), timeout)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, op)
}

func (s *Server) cancelOperation(w http.ResponseWriter, r *http.Request) {
	op, err := s.Operations.Cancel(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, op)
}

// streamEvents sends newline-delimited JSON events until the client goes away.
func (s *Server) streamEvents(w http.ResponseWriter, r *http.Request) {
	var types []string
	if v := r.URL.Query().Get("type"); v != "" {
		for _, t := range strings.Split(v, ",") {
			if t != api.EventLifecycle && t != api.EventOperation {
				writeError(w, errdefs.Invalid("unknown event type %q", t))
				return
			}
			types = append(types, t)
		}
	}
	l := s.Events.Subscribe(types...)
	defer l.Close()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-l.C:
			if !ok {
				return
			}
			if err := enc.Encode(ev); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

// hostCacheFor bounds how often the component versions are re-read (each is a process run).
const hostCacheFor = 30 * time.Second

func (s *Server) getHost(w http.ResponseWriter, r *http.Request) {
	s.hostMu.Lock()
	if time.Since(s.hostAt) > hostCacheFor {
		s.hostSeen = hostinfo.Collect(r.Context(), s.Dir)
		s.hostAt = time.Now()
	}
	h := s.hostSeen
	s.hostMu.Unlock()
	h.Memory.Total, h.Memory.Available = hostinfo.Memory()
	h.Drivers = s.driverInfo(r.Context())
	alloc, err := s.Instances.Allocated(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	h.Allocated = alloc
	writeJSON(w, http.StatusOK, h)
}

func (s *Server) driverInfo(ctx context.Context) []api.DriverInfo {
	var out []api.DriverInfo
	types := s.Drivers.Types()
	for _, name := range s.Drivers.Names() {
		d, _ := s.Drivers.ByName(name)
		info := d.Info(ctx)
		out = append(out, api.DriverInfo{Name: name, Type: strings.Join(types[name], ","), Version: info.Version,
			Available: info.Available, Reason: info.Reason, Capabilities: info.Capabilities, Missing: info.Missing})
	}
	return out
}

func boolParam(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errdefs.Invalid("query parameter %s=%q: want true or false", name, v)
	}
	return b, nil
}
