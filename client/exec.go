package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"tandem/api"
	"tandem/internal/stream"
)

// TermSize is a terminal's size, for resizes during an interactive exec.
type TermSize struct{ Rows, Cols uint16 }

// ExecIO carries an exec's streams. Stdin may be nil; Resize may be nil.
type ExecIO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan TermSize
}

// openStream posts req to path asking for a tandem-stream and returns the upgraded connection.
func (c *Client) openStream(ctx context.Context, path string, req any) (*stream.Conn, io.Closer, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", stream.Upgrade)
	resp, err := c.sendRaw(ctx, http.MethodPost, c.base+path, bytes.NewReader(body), int64(len(body)), h)
	if err != nil {
		return nil, nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		return nil, nil, fmt.Errorf("%s: the daemon did not switch to a stream (status %d)", path, resp.StatusCode)
	}
	return stream.New(rwc), rwc, nil
}

// ExecInstance runs a command in a running instance and returns its exit code.
func (c *Client) ExecInstance(ctx context.Context, name string, req api.InstanceExecPost, streams ExecIO) (int, error) {
	if name == "" {
		return -1, errNoName
	}
	sc, closer, err := c.openStream(ctx, instancePath(name)+"/exec", req)
	if err != nil {
		return -1, err
	}
	defer closer.Close()
	stop := context.AfterFunc(ctx, func() { closer.Close() })
	defer stop()
	go sendInput(sc, streams.Stdin, streams.Resize)
	for {
		typ, p, err := sc.ReadFrame()
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("exec: connection lost before the command ended: %w", err)
		}
		switch typ {
		case stream.Stdout:
			writeTo(streams.Stdout, p)
		case stream.Stderr:
			writeTo(streams.Stderr, p)
		case stream.Exit:
			return stream.ParseExit(p)
		case stream.Error:
			return -1, errors.New(string(p))
		}
	}
}

// sendInput copies stdin and resizes to the stream, then says stdin ended.
func sendInput(sc *stream.Conn, stdin io.Reader, resize <-chan TermSize) {
	if resize != nil {
		go func() {
			for sz := range resize {
				if sc.WriteFrame(stream.Resize, stream.ResizePayload(sz.Rows, sz.Cols)) != nil {
					return
				}
			}
		}()
	}
	if stdin != nil {
		io.Copy(sc.Writer(stream.Stdin), stdin)
	}
	sc.WriteFrame(stream.StdinClose, nil)
}

func writeTo(w io.Writer, p []byte) {
	if w != nil {
		w.Write(p)
	}
}

// AttachConsole joins an instance's console: what in gives is typed, what the console prints goes to
// out. It returns when in ends (after a detach), the console closes, or ctx ends.
func (c *Client) AttachConsole(ctx context.Context, name string, in io.Reader, out io.Writer) error {
	sc, closer, err := c.openStream(ctx, instancePath(name)+"/console", struct{}{})
	if err != nil {
		return err
	}
	defer closer.Close()
	stop := context.AfterFunc(ctx, func() { closer.Close() })
	defer stop()
	go sendInput(sc, in, nil)
	for {
		typ, p, err := sc.ReadFrame()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
		switch typ {
		case stream.Stdout:
			writeTo(out, p)
		case stream.Exit:
			return nil
		case stream.Error:
			return errors.New(string(p))
		}
	}
}

// ConsoleLog returns what an instance's console printed.
func (c *Client) ConsoleLog(ctx context.Context, name string) ([]byte, error) {
	resp, err := c.sendRaw(ctx, http.MethodGet, c.base+instancePath(name)+"/console", nil, -1, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
}
