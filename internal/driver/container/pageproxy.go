package container

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// CRIU's page server protocol (criu/page-xfer.c): the client sends fixed-size requests
// (struct page_server_iov: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id, host byte order; the
// low 16 bits of cmd are the command), the server answers with a request header plus pages.
// A lazy-pages client sends only PS_IOV_GET, then PS_IOV_CLOSE when it has every page, and
// waits for a 4-byte status.
const (
	psIOVSize   = 24
	psCmdMask   = 0xffff
	psIOVClose  = 0x1023
	psIOVFClose = 0x1024
	psIOVBogus  = 0xdead // unknown to CRIU: it fails the transfer and resumes the tasks
)

// pageProxy stands between the destination's lazy-pages daemon and the source's page server.
type pageProxy struct {
	ln  net.Listener
	src *net.TCPConn

	mu       sync.Mutex
	dst      net.Conn
	closeReq []byte        // the destination's held close request
	closed   chan struct{} // closed when closeReq arrived
	gone     chan struct{} // closed when the destination went away without one
	settled  bool          // committed or aborted
}

// startPageProxy connects to the page server at src (it accepts one connection: ours) and
// listens on addr for the destination.
func startPageProxy(addr, src string) (*pageProxy, error) {
	c, err := net.DialTimeout("tcp", src, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to CRIU's page server: %w", err)
	}
	sc := c.(*net.TCPConn)
	sc.SetLinger(0) // our death resets the connection: CRIU then resumes the source
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		sc.Write(bogusIOV())
		sc.Close()
		return nil, fmt.Errorf("page server address %s: %w", addr, err)
	}
	pp := &pageProxy{ln: ln, src: sc, closed: make(chan struct{}), gone: make(chan struct{})}
	go pp.serve()
	return pp, nil
}

func (pp *pageProxy) serve() {
	dst, err := pp.ln.Accept()
	pp.ln.Close() // one destination
	if err != nil {
		return
	}
	pp.mu.Lock()
	if pp.settled {
		pp.mu.Unlock()
		dst.Close()
		return
	}
	pp.dst = dst
	pp.mu.Unlock()
	go func() { // pages (and the final status) to the destination
		io.Copy(dst, pp.src)
		dst.Close()
	}()
	req := make([]byte, psIOVSize)
	for {
		if _, err := io.ReadFull(dst, req); err != nil {
			close(pp.gone)
			return
		}
		if cmd := binary.NativeEndian.Uint32(req) & psCmdMask; cmd == psIOVClose || cmd == psIOVFClose {
			pp.mu.Lock()
			pp.closeReq = append([]byte(nil), req...)
			pp.mu.Unlock()
			close(pp.closed)
			return
		}
		if _, err := pp.src.Write(req); err != nil {
			close(pp.gone)
			return
		}
	}
}

// wait returns once the destination has every page (its close is held here), or fails when it
// went away first.
func (pp *pageProxy) wait(ctx context.Context) error {
	select {
	case <-pp.closed:
		return nil
	case <-pp.gone:
		return errors.New("the destination disconnected before it had every page")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// commit waits until the destination has every page, then lets CRIU finish (it kills the
// source's tasks).
func (pp *pageProxy) commit(ctx context.Context) error {
	select {
	case <-pp.closed:
	case <-pp.gone:
		return errors.New("the destination disconnected before it had every page")
	case <-ctx.Done():
		return ctx.Err()
	}
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.settled {
		return errors.New("already settled")
	}
	pp.settled = true
	pp.src.SetLinger(-1) // from here an orderly end is the truth
	if _, err := pp.src.Write(pp.closeReq); err != nil {
		return fmt.Errorf("forward the close to CRIU: %w", err)
	}
	return pp.src.CloseWrite() // CRIU sends its status, reads end-of-stream and succeeds
}

// abort makes CRIU fail the transfer, which resumes the source's tasks.
func (pp *pageProxy) abort() {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if pp.settled {
		return
	}
	pp.settled = true
	pp.ln.Close()
	pp.src.Write(bogusIOV())
	pp.src.Close()
	if pp.dst != nil {
		pp.dst.Close()
	}
}

func bogusIOV() []byte {
	b := make([]byte, psIOVSize)
	binary.NativeEndian.PutUint32(b, psIOVBogus)
	return b
}

// abortPageServer fails a page server nobody else has connected to yet.
func abortPageServer(addr string) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return
	}
	c.Write(bogusIOV())
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}
