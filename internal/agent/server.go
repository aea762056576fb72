package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// Server is the guest end: it runs commands and moves files for the host. Serve may be called
// again on the same port after the host went away; each call starts with no requests.
type Server struct {
	mu        sync.Mutex
	nonce     string
	live      bool // a hello has been answered on this connection
	announced bool
	reqs      map[uint64]*serverReq
}

type serverReq struct {
	cancel context.CancelFunc
	signal func(sig int)           // exec only
	resize func(rows, cols uint16) // exec with a terminal only
}

// Serve handles one connection until rw fails or reports end of file, which on a virtio-serial
// port means the host hung up. Requests still running are then cancelled.
func (s *Server) Serve(ctx context.Context, rw io.ReadWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var c *conn
	c = newConn(rw, func(f *Frame) { s.handle(ctx, c, f) })
	s.mu.Lock()
	s.live = false
	announce := !s.announced
	s.announced = true
	s.mu.Unlock()
	if announce {
		// Tell a host that is still connected to a previous agent process to shake hands again. With
		// no host connected the write waits (virtio-serial) and a new host ignores it.
		c.send(&Frame{T: tHello, Version: Version})
	}
	err := c.readLoop(rw)
	s.reset()
	return err
}

// reset cancels every request: their host is gone.
func (s *Server) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, r := range s.reqs {
		r.cancel()
		delete(s.reqs, id)
	}
}

func (s *Server) handle(ctx context.Context, c *conn, f *Frame) {
	if f.T == tHello {
		s.mu.Lock()
		fresh := f.Nonce != s.nonce
		s.mu.Unlock()
		if fresh { // a new host session: nothing of the old one is wanted any more
			s.reset()
		}
		s.mu.Lock()
		s.nonce, s.live = f.Nonce, true
		s.mu.Unlock()
		c.send(&Frame{T: tHello, Nonce: f.Nonce, Version: Version})
		return
	}
	s.mu.Lock()
	live := s.live
	r := s.reqs[f.ID]
	s.mu.Unlock()
	if !live {
		return // bytes from before this connection's hello
	}
	switch f.T {
	case tExec:
		if f.Exec == nil || len(f.Exec.Cmd) == 0 {
			c.send(&Frame{T: tError, ID: f.ID, Error: "exec: empty command"})
			return
		}
		stdin := c.inbound(f.ID, 0) // before returning: the host sends stdin right behind the request
		req := s.begin(ctx, f.ID)
		go func() {
			defer s.end(f.ID)
			s.exec(req, c, f.ID, f.Exec, stdin)
		}()
	case tPush:
		in := c.inbound(f.ID, 0)
		req := s.begin(ctx, f.ID)
		go func() {
			defer s.end(f.ID)
			defer c.dropInbound(f.ID, 0)
			reply(c, f.ID, tDone, s.push(req.ctx, f.File, in))
		}()
	case tPull:
		req := s.begin(ctx, f.ID)
		go func() {
			defer s.end(f.ID)
			reply(c, f.ID, tDone, s.pull(req.ctx, c, f.ID, f.File))
		}()
	case tInfo:
		go func() {
			info := guestInfo()
			c.send(&Frame{T: tInfo, ID: f.ID, Info: &info})
		}()
	case tSignal:
		if r != nil && r.signal != nil {
			r.signal(f.Signal)
		}
	case tResize:
		if r != nil && r.resize != nil {
			r.resize(f.Rows, f.Cols)
		}
	case tCancel:
		if r != nil {
			r.cancel()
		}
	}
}

// activeReq is a request's context plus hooks the exec fills in.
type activeReq struct {
	ctx context.Context
	r   *serverReq
	s   *Server
	id  uint64
}

func (s *Server) begin(ctx context.Context, id uint64) *activeReq {
	ctx, cancel := context.WithCancel(ctx)
	r := &serverReq{cancel: cancel}
	s.mu.Lock()
	if s.reqs == nil {
		s.reqs = map[uint64]*serverReq{}
	}
	s.reqs[id] = r
	s.mu.Unlock()
	return &activeReq{ctx: ctx, r: r, s: s, id: id}
}

// setHooks publishes an exec's signal and resize functions.
func (a *activeReq) setHooks(signal func(int), resize func(uint16, uint16)) {
	a.s.mu.Lock()
	a.r.signal, a.r.resize = signal, resize
	a.s.mu.Unlock()
}

func (s *Server) end(id uint64) {
	s.mu.Lock()
	r := s.reqs[id]
	delete(s.reqs, id)
	s.mu.Unlock()
	if r != nil {
		r.cancel()
	}
}

// reply ends a request with ok or an error frame.
func reply(c *conn, id uint64, ok string, err error) {
	if err != nil {
		c.send(&Frame{T: tError, ID: id, Error: err.Error()})
		return
	}
	c.send(&Frame{T: ok, ID: id})
}

// push writes a file atomically: a temporary file next to it, fsynced, then renamed.
func (s *Server) push(ctx context.Context, hdr *FileHeader, in io.Reader) error {
	if hdr == nil || !filepath.IsAbs(hdr.Path) {
		return fmt.Errorf("push: want an absolute path")
	}
	mode := os.FileMode(hdr.Mode).Perm()
	if hdr.Mode == 0 {
		mode = 0o644
	}
	tmp := filepath.Join(filepath.Dir(hdr.Path), ".tandem-push-"+filepath.Base(hdr.Path))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := copyCtx(ctx, f, in); err != nil {
		return err
	}
	if err := f.Chown(hdr.UID, hdr.GID); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // the umask narrowed the create mode
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ok = true
	return os.Rename(tmp, hdr.Path)
}

// pull sends a file's header, then its bytes as data on fd 1, always ending the stream.
func (s *Server) pull(ctx context.Context, c *conn, id uint64, hdr *FileHeader) error {
	if hdr == nil || !filepath.IsAbs(hdr.Path) {
		return fmt.Errorf("pull: want an absolute path")
	}
	f, err := os.Open(hdr.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("pull: %s is not a regular file", hdr.Path)
	}
	out := &FileHeader{Path: hdr.Path, Mode: uint32(fi.Mode().Perm()), Size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		out.UID, out.GID = int(st.Uid), int(st.Gid)
	}
	if err := c.send(&Frame{T: tFile, ID: id, File: out}); err != nil {
		return err
	}
	w := c.outbound(id, 1, ctx.Done())
	_, err = io.Copy(w, f)
	w.Close()
	return err
}
