package server

import (
	"bufio"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"tandem/api"
	"tandem/client"
	"tandem/internal/errdefs"
)

// Moves are asked for by users (…/move); the destination's side (/1.0/migrations) is called by
// the source host, over mutual TLS.
func (s *Server) registerMigrations(mux *http.ServeMux) {
	mux.HandleFunc("POST /1.0/instances/{name}/move", s.moveInstance)
	mux.HandleFunc("POST /1.0/instances/{name}/copy", s.copyInstance)
	mux.HandleFunc("POST /1.0/migrations", s.prepareMigration)
	mux.HandleFunc("GET /1.0/migrations/{id}", s.getMigration)
	mux.HandleFunc("DELETE /1.0/migrations/{id}", s.abortMigration)
	mux.HandleFunc("POST /1.0/migrations/{id}/restore", s.restoreMigration)
	mux.HandleFunc("POST /1.0/migrations/{id}/commit", s.commitMigration)
	mux.HandleFunc("POST /1.0/migrations/{id}/tunnel", s.migrationTunnel)
}

func (s *Server) migrationsOn(w http.ResponseWriter) bool {
	if s.Migrations == nil {
		writeError(w, errdefs.Unavailable("this daemon does not migrate instances"))
		return false
	}
	return true
}

func (s *Server) moveInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstanceMovePost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if !s.migrationsOn(w) {
		return
	}
	if req.Target == "" {
		writeError(w, errdefs.Invalid("a move needs a target remote"))
		return
	}
	op, err := s.Migrations.Move(r.Context(), r.PathValue("name"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

// copyInstance copies here (the instance manager) or to a remote (the migration engine).
func (s *Server) copyInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstanceCopyPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	var op *api.Operation
	var err error
	if req.Target == "" {
		op, err = s.Instances.Copy(r.Context(), r.PathValue("name"), req)
	} else if s.migrationsOn(w) {
		op, err = s.Migrations.Copy(r.Context(), r.PathValue("name"), req)
	} else {
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func (s *Server) prepareMigration(w http.ResponseWriter, r *http.Request) {
	var req api.MigrationPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if !s.migrationsOn(w) {
		return
	}
	info, err := s.Migrations.Prepare(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

func (s *Server) getMigration(w http.ResponseWriter, r *http.Request) {
	if !s.migrationsOn(w) {
		return
	}
	info, err := s.Migrations.Status(r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) abortMigration(w http.ResponseWriter, r *http.Request) {
	if !s.migrationsOn(w) {
		return
	}
	if err := s.Migrations.Abort(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

func (s *Server) restoreMigration(w http.ResponseWriter, r *http.Request) {
	var req api.MigrationRestorePost
	if r.ContentLength != 0 {
		if err := decode(w, r, &req); err != nil {
			writeError(w, err)
			return
		}
	}
	if !s.migrationsOn(w) {
		return
	}
	info, err := s.Migrations.Restore(r.Context(), r.PathValue("id"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) commitMigration(w http.ResponseWriter, r *http.Request) {
	if !s.migrationsOn(w) {
		return
	}
	info, err := s.Migrations.Commit(r.Context(), r.PathValue("id"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// migrationTunnel switches the connection to raw bytes joined to one of the migration's endpoints.
func (s *Server) migrationTunnel(w http.ResponseWriter, r *http.Request) {
	if !s.migrationsOn(w) {
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), client.TunnelUpgrade) {
		writeError(w, errdefs.Invalid("a tunnel needs the connection upgraded: send Upgrade: %s", client.TunnelUpgrade))
		return
	}
	id, to := r.PathValue("id"), r.URL.Query().Get("to")
	if _, err := s.Migrations.Status(id); err != nil {
		writeError(w, err)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, errdefs.Unavailable("connection cannot be upgraded: %v", err))
		return
	}
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + client.TunnelUpgrade + "\r\n\r\n")
	if err := rw.Flush(); err != nil {
		conn.Close()
		return
	}
	conn.SetDeadline(time.Time{}) // a tunnel lasts as long as the transfer
	// Bytes the client sent after its request are in the server's buffer: read through it.
	tc := &bufferedConn{Conn: conn, r: rw.Reader}
	if err := s.Migrations.Tunnel(r.Context(), id, to, tc); err != nil {
		slog.Warn("migration tunnel", "migration", id, "to", to, "err", err)
	}
	conn.Close()
}

// bufferedConn reads through the HTTP server's buffer and keeps the half close of the connection.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) CloseWrite() error {
	if hc, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return hc.CloseWrite()
	}
	return nil
}
