package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/stream"
)

func (s *Server) registerExec(mux *http.ServeMux) {
	mux.HandleFunc("POST /1.0/instances/{name}/exec", s.execInstance)
	mux.HandleFunc("POST /1.0/instances/{name}/console", s.attachConsole)
	mux.HandleFunc("GET /1.0/instances/{name}/console", s.consoleLog)
}

// wantsStream checks the request asks to switch to a tandem-stream.
func wantsStream(r *http.Request) error {
	if !strings.EqualFold(r.Header.Get("Upgrade"), stream.Upgrade) {
		return errdefs.Invalid("this endpoint needs the connection upgraded: send Upgrade: %s", stream.Upgrade)
	}
	return nil
}

// switchProtocols answers 101, takes the raw connection over from the HTTP server and frames it.
// Reads go through the server's buffer: the client may have sent frames already.
func switchProtocols(w http.ResponseWriter) (*stream.Conn, net.Conn, error) {
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, errdefs.Unavailable("connection cannot be upgraded: %v", err)
	}
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + stream.Upgrade + "\r\n\r\n")
	if err := rw.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return stream.New(struct {
		io.Reader
		io.Writer
	}{rw, conn}), conn, nil
}

func (s *Server) execInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstanceExecPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if len(req.Command) == 0 {
		writeError(w, errdefs.Invalid("no command given"))
		return
	}
	if err := wantsStream(r); err != nil {
		writeError(w, err)
		return
	}
	run, err := s.Instances.ExecTarget(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	sc, conn, err := switchProtocols(w)
	if err != nil {
		slog.Error("exec: upgrade", "err", err)
		return
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	stdinR, stdinW := io.Pipe()
	resize := make(chan driver.TermSize, 4)
	// The client's frames: stdin, its end, resizes. A broken connection ends the command.
	go func() {
		defer stdinW.Close()
		for {
			typ, p, err := sc.ReadFrame()
			if err != nil {
				cancel()
				return
			}
			switch typ {
			case stream.Stdin:
				if _, err := stdinW.Write(p); err != nil {
					continue // the command stopped reading; keep serving resizes
				}
			case stream.StdinClose:
				stdinW.Close()
			case stream.Resize:
				if rows, cols, err := stream.ParseResize(p); err == nil {
					select {
					case resize <- driver.TermSize{Rows: rows, Cols: cols}:
					default:
					}
				}
			}
		}
	}()
	env := make([]string, 0, len(req.Environment))
	for k, v := range req.Environment {
		env = append(env, k+"="+v)
	}
	code, err := run(ctx, driver.ExecRequest{
		Cmd: req.Command, Env: env, Cwd: req.Cwd, TTY: req.Interactive,
		Size: driver.TermSize{Rows: req.Rows, Cols: req.Cols}, Resize: resize,
		Stdin: stdinR, Stdout: sc.Writer(stream.Stdout), Stderr: sc.Writer(stream.Stderr),
	})
	stdinR.Close()
	if err != nil {
		sc.WriteFrame(stream.Error, []byte(err.Error()))
		return
	}
	sc.WriteFrame(stream.Exit, stream.ExitPayload(code))
}

// attachConsole joins the client to the instance's console: bytes both ways until either side goes.
func (s *Server) attachConsole(w http.ResponseWriter, r *http.Request) {
	if err := wantsStream(r); err != nil {
		writeError(w, err)
		return
	}
	// Whatever body came with the request must be read now: after the upgrade, unread bytes would be
	// taken for the first frames.
	if _, err := io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxBody)); err != nil {
		writeError(w, errdefs.Invalid("reading request: %v", err))
		return
	}
	console, err := s.Instances.Console(context.WithoutCancel(r.Context()), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer console.Close()
	sc, conn, err := switchProtocols(w)
	if err != nil {
		slog.Error("console: upgrade", "err", err)
		return
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(sc.Writer(stream.Stdout), console)
		done <- struct{}{}
	}()
	go func() {
		for {
			typ, p, err := sc.ReadFrame()
			if err != nil || typ == stream.StdinClose {
				break
			}
			if typ == stream.Stdin {
				if _, err := console.Write(p); err != nil {
					break
				}
			}
		}
		done <- struct{}{}
	}()
	<-done
	sc.WriteFrame(stream.Exit, stream.ExitPayload(0))
}

func (s *Server) consoleLog(w http.ResponseWriter, r *http.Request) {
	log, err := s.Instances.ConsoleLog(r.Context(), r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	defer log.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.Copy(w, log)
}
