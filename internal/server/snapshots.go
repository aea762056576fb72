package server

import (
	"net/http"

	"tandem/api"
)

// Instance snapshots: listing answers at once; create, restore and delete run in operations.
func (s *Server) registerSnapshots(mux *http.ServeMux) {
	mux.HandleFunc("GET /1.0/instances/{name}/snapshots", s.listInstanceSnapshots)
	mux.HandleFunc("POST /1.0/instances/{name}/snapshots", s.createInstanceSnapshot)
	mux.HandleFunc("DELETE /1.0/instances/{name}/snapshots/{snap}", s.deleteInstanceSnapshot)
	mux.HandleFunc("POST /1.0/instances/{name}/snapshots/{snap}/restore", s.restoreInstanceSnapshot)
}

func (s *Server) listInstanceSnapshots(w http.ResponseWriter, r *http.Request) {
	list, err := s.Instances.Snapshots(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) createInstanceSnapshot(w http.ResponseWriter, r *http.Request) {
	var req api.InstanceSnapshotsPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	op, err := s.Instances.CreateSnapshot(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func (s *Server) deleteInstanceSnapshot(w http.ResponseWriter, r *http.Request) {
	op, err := s.Instances.DeleteSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snap"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func (s *Server) restoreInstanceSnapshot(w http.ResponseWriter, r *http.Request) {
	op, err := s.Instances.RestoreSnapshot(r.Context(), r.PathValue("name"), r.PathValue("snap"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}
