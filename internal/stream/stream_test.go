package stream

import (
	"bytes"
	"io"
	"net"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ca, cb := New(a), New(b)
	big := bytes.Repeat([]byte("x"), maxFrame+10)
	go func() {
		ca.Writer(Stdout).Write(big)
		ca.WriteFrame(Resize, ResizePayload(24, 80))
		ca.WriteFrame(Exit, ExitPayload(-42))
	}()
	var got []byte
	for len(got) < len(big) {
		typ, p, err := cb.ReadFrame()
		if err != nil || typ != Stdout {
			t.Fatalf("frame %d %v", typ, err)
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("payload mangled")
	}
	typ, p, _ := cb.ReadFrame()
	if r, c, err := ParseResize(p); typ != Resize || r != 24 || c != 80 || err != nil {
		t.Fatalf("resize %d %d %d %v", typ, r, c, err)
	}
	typ, p, _ = cb.ReadFrame()
	if code, err := ParseExit(p); typ != Exit || code != -42 || err != nil {
		t.Fatalf("exit %d %d %v", typ, code, err)
	}
}

func TestOversizedFrameRefused(t *testing.T) {
	hostile := bytes.NewBuffer([]byte{Stdin, 0xff, 0xff, 0xff, 0xff})
	if _, _, err := New(struct {
		io.Reader
		io.Writer
	}{hostile, io.Discard}).ReadFrame(); err == nil {
		t.Fatal("4 GiB frame accepted")
	}
}
