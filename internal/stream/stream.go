// Package stream frames the bidirectional byte streams of exec and console sessions over one
// connection (an HTTP connection upgraded after the request): stdin, stdout and stderr kept apart,
// terminal resizes, and the exit code at the end.
package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame types.
const (
	Stdin      byte = 1
	Stdout     byte = 2
	Stderr     byte = 3
	StdinClose byte = 4 // no more stdin
	Resize     byte = 5 // payload: rows, cols as two big-endian uint16
	Exit       byte = 6 // payload: exit code as big-endian int32; the last frame
	Error      byte = 7 // payload: message; the last frame
)

// Upgrade is the HTTP Upgrade token the API uses for these streams.
const Upgrade = "tandem-stream"

// maxFrame bounds a frame so a hostile peer cannot make us allocate without limit.
const maxFrame = 1 << 20

// Conn reads and writes frames. Writes are safe from several goroutines.
type Conn struct {
	rw io.ReadWriter
	mu sync.Mutex
}

func New(rw io.ReadWriter) *Conn { return &Conn{rw: rw} }

// WriteFrame sends one frame.
func (c *Conn) WriteFrame(typ byte, payload []byte) error {
	if len(payload) > maxFrame {
		return fmt.Errorf("stream: frame of %d bytes is too large", len(payload))
	}
	hdr := [5]byte{typ}
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.rw.Write(hdr[:]); err != nil {
		return err
	}
	_, err := c.rw.Write(payload)
	return err
}

// ReadFrame receives one frame.
func (c *Conn) ReadFrame() (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(c.rw, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("stream: frame of %d bytes is too large", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(c.rw, buf); err != nil {
		return 0, nil, err
	}
	return hdr[0], buf, nil
}

// Writer returns an io.Writer that sends each write as frames of the given type.
func (c *Conn) Writer(typ byte) io.Writer { return frameWriter{c, typ} }

type frameWriter struct {
	c   *Conn
	typ byte
}

func (w frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += maxFrame {
		end := min(off+maxFrame, len(p))
		if err := w.c.WriteFrame(w.typ, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// ResizePayload encodes a terminal size.
func ResizePayload(rows, cols uint16) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b, rows)
	binary.BigEndian.PutUint16(b[2:], cols)
	return b
}

// ParseResize decodes a terminal size.
func ParseResize(p []byte) (rows, cols uint16, err error) {
	if len(p) != 4 {
		return 0, 0, errors.New("stream: bad resize frame")
	}
	return binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:]), nil
}

// ExitPayload encodes an exit code.
func ExitPayload(code int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(int32(code)))
	return b
}

// ParseExit decodes an exit code.
func ParseExit(p []byte) (int, error) {
	if len(p) != 4 {
		return 0, errors.New("stream: bad exit frame")
	}
	return int(int32(binary.BigEndian.Uint32(p))), nil
}
