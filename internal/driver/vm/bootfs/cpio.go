package bootfs

import (
	"fmt"
	"io"
	"io/fs"
)

// CPIO writes the "newc" cpio format the kernel unpacks into its initramfs: a 110-byte ASCII
// header per entry, the name NUL-terminated, name and data each padded to 4 bytes, then a trailer.
// Entries are owned by root whoever writes them, so no privilege is needed to make an initramfs.
type CPIO struct {
	w   io.Writer
	off int64
	ino int
	err error
}

// Unix file type bits as cpio stores them.
const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChar = 0o020000
)

// NewCPIO writes an archive to w; Close ends it.
func NewCPIO(w io.Writer) *CPIO { return &CPIO{w: w} }

func (c *CPIO) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

func (c *CPIO) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

// entry writes one member. name has no leading slash; rdev is (major, minor) for device nodes.
func (c *CPIO) entry(name string, mode uint32, data []byte, major, minor int) {
	c.ino++
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

func (c *CPIO) Dir(name string) { c.entry(name, modeDir|0o755, nil, 0, 0) }
func (c *CPIO) File(name string, perm fs.FileMode, data []byte) {
	c.entry(name, modeFile|uint32(perm.Perm()), data, 0, 0)
}
func (c *CPIO) Symlink(name, target string) {
	c.entry(name, modeLink|0o777, []byte(target), 0, 0)
}
func (c *CPIO) CharDev(name string, major, minor int) {
	c.entry(name, modeChar|0o600, nil, major, minor)
}

// Close writes the trailer and returns the first error.
func (c *CPIO) Close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}
