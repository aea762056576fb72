package server

import (
	"net/http"
	"strconv"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

// Headers carrying a file's mode and owner on /1.0/instances/NAME/files.
const (
	headerFileMode = "X-Tandem-Mode" // octal
	headerFileUID  = "X-Tandem-Uid"
	headerFileGID  = "X-Tandem-Gid"
)

// maxFileSize bounds a pushed file.
const maxFileSize = 8 << 30

func (s *Server) registerFiles(mux *http.ServeMux) {
	mux.HandleFunc("GET /1.0/instances/{name}/files", s.pullFile)
	mux.HandleFunc("POST /1.0/instances/{name}/files", s.pushFile)
}

func (s *Server) pushFile(w http.ResponseWriter, r *http.Request) {
	var opts driver.FileOpts
	if v := r.Header.Get(headerFileMode); v != "" {
		mode, err := strconv.ParseUint(v, 8, 32)
		if err != nil || mode > 0o7777 {
			writeError(w, errdefs.Invalid("file mode %q: want octal like 0644", v))
			return
		}
		opts.Mode = uint32(mode)
	}
	for _, h := range []struct {
		name string
		dst  *int
	}{{headerFileUID, &opts.UID}, {headerFileGID, &opts.GID}} {
		if v := r.Header.Get(h.name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeError(w, errdefs.Invalid("%s %q: want a number", h.name, v))
				return
			}
			*h.dst = n
		}
	}
	body := http.MaxBytesReader(w, r.Body, maxFileSize)
	if err := s.Instances.PushFile(r.Context(), r.PathValue("name"), r.URL.Query().Get("path"), body, opts); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}

// pullFile streams a file out. A failure after the first bytes can only cut the stream short; the
// client checks the length it got against the size in the trailer.
func (s *Server) pullFile(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Trailer", headerFileSize)
	lw := &lazyHeaderWriter{w: w}
	info, err := s.Instances.PullFile(r.Context(), r.PathValue("name"), r.URL.Query().Get("path"), lw)
	if err != nil {
		if !lw.started {
			writeError(w, err)
		}
		return
	}
	lw.start() // an empty file: nothing was written yet
	w.Header().Set(headerFileSize, strconv.FormatInt(info.Size, 10))
}

// headerFileSize is the trailer with a pulled file's size.
const headerFileSize = "X-Tandem-Size"

// lazyHeaderWriter sends the status with the first byte, so that an error before any data can still
// be an error response.
type lazyHeaderWriter struct {
	w       http.ResponseWriter
	started bool
}

func (l *lazyHeaderWriter) start() {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/octet-stream")
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyHeaderWriter) Write(p []byte) (int, error) {
	l.start()
	return l.w.Write(p)
}
