package fake

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"tandem/internal/driver"
)

var (
	_ driver.Execer   = (*Driver)(nil)
	_ driver.Consoler = (*Driver)(nil)
)

// Exec understands a few commands, enough to test the plumbing of streams and exit codes: echo ARGS,
// cat (stdin to stdout), warn ARGS (to stderr), exit N. Anything else exits 127.
func (d *Driver) Exec(ctx context.Context, h *driver.Handle, req driver.ExecRequest) (int, error) {
	if st, _ := d.State(ctx, h); st != driver.StatusRunning {
		return -1, driver.ErrNotRunning
	}
	out, errOut := req.Stdout, req.Stderr
	if out == nil {
		out = io.Discard
	}
	if errOut == nil || req.TTY {
		errOut = out
	}
	args := strings.Join(req.Cmd[1:], " ")
	switch req.Cmd[0] {
	case "echo":
		fmt.Fprintln(out, args)
	case "warn":
		fmt.Fprintln(errOut, args)
	case "cat":
		if req.Stdin != nil {
			if _, err := io.Copy(out, req.Stdin); err != nil {
				return -1, err
			}
		}
	case "exit":
		return strconv.Atoi(args)
	default:
		fmt.Fprintf(errOut, "%s: command not found\n", req.Cmd[0])
		return 127, nil
	}
	return 0, nil
}

// Console is an echoing line: what is typed comes back, after a greeting naming the instance.
func (d *Driver) Console(ctx context.Context, h *driver.Handle) (io.ReadWriteCloser, error) {
	if st, _ := d.State(ctx, h); st != driver.StatusRunning {
		return nil, driver.ErrNotRunning
	}
	ours, theirs := net.Pipe()
	go func() {
		defer ours.Close()
		fmt.Fprintf(ours, "fake console of %s\r\n", h.Spec.Name)
		io.Copy(ours, ours)
	}()
	return theirs, nil
}

// ConsoleLog is the greeting the console prints.
func (d *Driver) ConsoleLog(ctx context.Context, h *driver.Handle) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(fmt.Sprintf("fake console of %s\r\n", h.Spec.Name))), nil
}

var _ driver.NICHotplugger = (*Driver)(nil)

// AddNIC accepts a NIC on a running instance (there is nothing to plug).
func (d *Driver) AddNIC(ctx context.Context, h *driver.Handle, name string, dev map[string]string) error {
	if st, _ := d.State(ctx, h); st != driver.StatusRunning {
		return driver.ErrNotRunning
	}
	return nil
}

// RemoveNIC accepts the removal of a NIC from a running instance.
func (d *Driver) RemoveNIC(ctx context.Context, h *driver.Handle, name string, dev map[string]string) error {
	return d.AddNIC(ctx, h, name, dev)
}
