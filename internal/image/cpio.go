package image

import (
	"fmt"
	"io"
	"strings"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks an initramfs from. Writing it here,
// rather than running cpio, lets an unprivileged build add device nodes and root-owned files.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64
	err error
}

// cpioEntry is one member; Mode carries the file type bits (S_IFREG, S_IFDIR, ...).
type cpioEntry struct {
	Name         string
	Mode         uint32
	UID, GID     uint32
	Mtime        int64
	Data         []byte // regular files: content; symlinks: target
	Major, Minor uint32 // device nodes
}

const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioLink = 0o120000
	cpioChr  = 0o020000
)

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// add writes one entry. Names are relative ("init", "bin/busybox").
func (c *cpioWriter) add(e cpioEntry) error {
	name := strings.TrimPrefix(e.Name, "/")
	c.ino++
	nlink := uint32(1)
	if e.Mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, e.Mode, e.UID, e.GID, nlink, uint32(e.Mtime), uint32(len(e.Data)),
		0, 0, e.Major, e.Minor, uint32(len(name)+1), 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad()
	c.write(e.Data)
	c.pad()
	return c.err
}

// close writes the trailer entry that ends the archive.
func (c *cpioWriter) close() error {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len("TRAILER!!!")+1, 0)
	c.write([]byte(hdr))
	c.write([]byte("TRAILER!!!\x00"))
	c.pad()
	return c.err
}
