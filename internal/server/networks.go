package server

import (
	"context"
	"net/http"
	"sort"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/network"
)

func (s *Server) registerNetworks(mux *http.ServeMux) {
	mux.HandleFunc("GET /1.0/networks", s.listNetworks)
	mux.HandleFunc("POST /1.0/networks", s.createNetwork)
	mux.HandleFunc("GET /1.0/networks/{name}", s.getNetwork)
	mux.HandleFunc("DELETE /1.0/networks/{name}", s.deleteNetwork)
}

func (s *Server) networksOrError(w http.ResponseWriter) bool {
	if s.Networks == nil {
		writeError(w, errdefs.Unavailable("networking is disabled on this host"))
		return false
	}
	return true
}

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) {
	if !s.networksOrError(w) {
		return
	}
	out := []api.Network{}
	for _, n := range s.Networks.List(r.Context()) {
		out = append(out, networkView(n))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createNetwork(w http.ResponseWriter, r *http.Request) {
	if !s.networksOrError(w) {
		return
	}
	var req api.NetworksPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	// Creating a bridge and starting dnsmasq takes well under a second: answered synchronously.
	n, err := s.Networks.Create(context.WithoutCancel(r.Context()), network.Config{
		Name: req.Name, Subnet: req.Subnet, NAT: req.NAT, DNSDomain: req.DNSDomain, Uplink: req.Uplink,
		HostAccess: req.HostAccess})
	if err != nil {
		writeError(w, err)
		return
	}
	s.Events.Publish(api.EventLifecycle, api.LifecycleEvent{Action: "network-created", Source: "/1.0/networks/" + n.Name})
	writeJSON(w, http.StatusCreated, networkView(n))
}

func (s *Server) getNetwork(w http.ResponseWriter, r *http.Request) {
	if !s.networksOrError(w) {
		return
	}
	n, err := s.Networks.Get(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, networkView(n))
}

func (s *Server) deleteNetwork(w http.ResponseWriter, r *http.Request) {
	if !s.networksOrError(w) {
		return
	}
	name := r.PathValue("name")
	if err := s.Networks.Delete(context.WithoutCancel(r.Context()), name); err != nil {
		writeError(w, err)
		return
	}
	s.Events.Publish(api.EventLifecycle, api.LifecycleEvent{Action: "network-deleted", Source: "/1.0/networks/" + name})
	writeJSON(w, http.StatusOK, map[string]string{})
}

func networkView(n network.Network) api.Network {
	v := api.Network{Name: n.Name, Bridge: n.Bridge, Subnet: n.Subnet, Gateway: n.Gateway, NAT: n.NAT,
		DNSDomain: n.DNSDomain, Uplink: n.Uplink, HostAccess: n.HostAccess, UsedBy: []string{}}
	for _, l := range n.Leases {
		v.UsedBy = append(v.UsedBy, l.Instance+"/"+l.NIC)
	}
	sort.Strings(v.UsedBy)
	return v
}
