package container

import (
	"context"
	"io"
	"net"
	"os"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

// Console connects to the shim's attach socket: the shim, not the daemon, holds the pty, so an
// attachment survives nothing but the connection, and the console survives daemon restarts.
func (d *Driver) Console(ctx context.Context, h *driver.Handle) (io.ReadWriteCloser, error) {
	if err := d.wantStatus(ctx, h, driver.StatusRunning); err != nil {
		return nil, err
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", d.paths(h.ID).attachSock)
	if err != nil {
		return nil, errdefs.Unavailable("console of %s: %v", h.ID, err)
	}
	return conn, nil
}

// ConsoleLog opens console.log.1 and console.log, in that order.
func (d *Driver) ConsoleLog(ctx context.Context, h *driver.Handle) (io.ReadCloser, error) {
	if _, err := d.mustLoad(h); err != nil {
		return nil, err
	}
	p := d.paths(h.ID).consoleLog
	var files []*os.File
	for _, name := range []string{p + ".1", p} {
		if f, err := os.Open(name); err == nil {
			files = append(files, f)
		}
	}
	return &multiFile{files: files}, nil
}

type multiFile struct {
	files []*os.File
	i     int
}

func (m *multiFile) Read(b []byte) (int, error) {
	for m.i < len(m.files) {
		n, err := m.files[m.i].Read(b)
		if err == io.EOF {
			m.i++
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
	return 0, io.EOF
}

func (m *multiFile) Close() error {
	for _, f := range m.files {
		f.Close()
	}
	return nil
}
