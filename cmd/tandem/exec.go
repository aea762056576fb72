package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"tandem/api"
	"tandem/client"
)

func init() {
	register(newExecCmd)
	register(newConsoleCmd)
}

// exitCodeError makes the CLI exit with a command's own exit code, printing nothing.
type exitCodeError struct{ code int }

func (e *exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newExecCmd(a *app) *cobra.Command {
	var tty bool
	var env []string
	var cwd string
	cmd := &cobra.Command{
		Use:   "exec NAME [--] COMMAND [ARG...]",
		Short: "Run a command in a running instance (container or VM), passing stdin, stdout, stderr and the exit code through",
		Args:  minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			envMap, err := parseKeyValues(env)
			if err != nil {
				return err
			}
			req := api.InstanceExecPost{Command: args[1:], Environment: envMap, Cwd: cwd, Interactive: tty}
			streams := client.ExecIO{Stdin: a.stdin, Stdout: a.stdout, Stderr: a.stderr}
			if tty {
				restore, resize, err := a.rawTerminal(&req)
				if err != nil {
					return err
				}
				defer restore()
				streams.Resize = resize
			}
			code, err := c.ExecInstance(ctx(cmd), args[0], req, streams)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitCodeError{code: code}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "run on a terminal (interactive)")
	cmd.Flags().StringArrayVar(&env, "env", nil, "environment variable KEY=VALUE (repeatable)")
	cmd.Flags().StringVar(&cwd, "cwd", "", "working directory inside the instance")
	return cmd
}

// rawTerminal puts stdin in raw mode, records the terminal size in req, and reports resizes.
func (a *app) rawTerminal(req *api.InstanceExecPost) (restore func(), resize <-chan client.TermSize, err error) {
	f, ok := a.stdin.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func() {}, nil, nil // not a terminal: run with a pty inside anyway, no local raw mode
	}
	fd := int(f.Fd())
	if cols, rows, err := term.GetSize(fd); err == nil {
		req.Rows, req.Cols = uint16(rows), uint16(cols)
	}
	old, err := term.MakeRaw(fd)
	if err != nil {
		return nil, nil, err
	}
	ch := make(chan client.TermSize, 1)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGWINCH)
	go func() {
		for range sig {
			if cols, rows, err := term.GetSize(fd); err == nil {
				select {
				case ch <- client.TermSize{Rows: uint16(rows), Cols: uint16(cols)}:
				default:
				}
			}
		}
	}()
	return func() { signal.Stop(sig); term.Restore(fd, old) }, ch, nil
}

// detachKeys is what ends a console session: Ctrl-a then q.
var detachKeys = []byte{0x01, 'q'}

func newConsoleCmd(a *app) *cobra.Command {
	var showLog bool
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to an instance's console (detach with Ctrl-a q), or print its log with --show-log",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			if showLog {
				log, err := c.ConsoleLog(ctx(cmd), args[0])
				if err != nil {
					return err
				}
				_, err = a.stdout.Write(log)
				return err
			}
			restore, _, err := a.rawTerminal(&api.InstanceExecPost{})
			if err != nil {
				return err
			}
			defer restore()
			fmt.Fprintf(a.stderr, "To detach from the console, press: Ctrl-a q\r\n")
			return c.AttachConsole(ctx(cmd), args[0], &detachReader{r: a.stdin}, a.stdout)
		},
	}
	cmd.Flags().BoolVar(&showLog, "show-log", false, "print what the console printed so far and exit")
	return cmd
}

// detachReader passes input through until the detach keys, then reports end of input.
type detachReader struct {
	r       io.Reader
	pending bool // the last byte read was the first detach key
	done    bool
}

func (d *detachReader) Read(p []byte) (int, error) {
	if d.done {
		return 0, io.EOF
	}
	n, err := d.r.Read(p)
	out := p[:0]
	for _, b := range p[:n] {
		if d.pending {
			d.pending = false
			if b == detachKeys[1] {
				d.done = true
				return len(out), nil
			}
			out = append(out, detachKeys[0])
		}
		if b == detachKeys[0] {
			d.pending = true
			continue
		}
		out = append(out, b)
	}
	if len(out) == 0 && err == nil {
		return d.Read(p)
	}
	return len(out), err
}
