// Package logfile keeps console logs bounded: a log that rotates to NAME.1 past a size (the
// container shim's and a VM's console), and a drain that feeds one from a FIFO (QEMU writes its
// console log into one, since it cannot cap a file itself).
package logfile

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// DefaultMax is the size a console log reaches before it rotates.
const DefaultMax = 1 << 20

// Rotating appends to a file and, past max bytes, moves it to path.1 and starts again: at most
// about 2*max bytes are kept. The file is the owner's alone (0600): a console shows whatever the
// guest printed.
type Rotating struct {
	path string
	max  int64
	f    *os.File
	size int64
}

// Open opens (appends to) the log at path; max <= 0 is DefaultMax.
func Open(path string, max int64) (*Rotating, error) {
	if max <= 0 {
		max = DefaultMax
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	st, _ := f.Stat()
	return &Rotating{path: path, max: max, f: f, size: st.Size()}, nil
}

// Write appends b, rotating first if b would take the file past max. Errors are dropped: a
// console must never stall on its log.
func (l *Rotating) Write(b []byte) {
	if int64(len(b)) > l.max { // only its newest part could be kept anyway
		b = b[int64(len(b))-l.max:]
	}
	if l.size+int64(len(b)) > l.max {
		l.f.Close()
		os.Rename(l.path, l.path+".1")
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return
		}
		l.f, l.size = f, 0
	}
	n, _ := l.f.Write(b)
	l.size += int64(n)
}

// Close closes the file.
func (l *Rotating) Close() { l.f.Close() }

// DrainFIFO copies what is written into the FIFO at fifo to the rotating log at path until the
// last writer closes it. Opening the FIFO waits for a first writer: whoever made the FIFO for a
// writer that never came must open it for writing once (Release) to end the wait.
func DrainFIFO(fifo, path string, max int64) error {
	log, err := Open(path, max)
	if err != nil {
		return err
	}
	defer log.Close()
	f, err := os.OpenFile(fifo, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			log.Write(buf[:n])
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Release ends a DrainFIFO still waiting for its first writer (it sees the end at once); a FIFO
// with no reader, or none at all, is left as it is.
func Release(fifo string) {
	f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err == nil {
		f.Close()
	}
}
