// Command tandem is the command-line client of tandemd: it runs VMs and system containers through the
// REST API, using the tandem/client package.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole CLI behind main, kept apart so that tests can drive it with their own writers.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default handling so that a second Ctrl-C kills at once.
	go func() { <-ctx.Done(); stop() }()
	a := newApp(stdout, stderr)
	a.stdin = os.Stdin
	return execute(ctx, a, args)
}

// execute runs one command line and turns its outcome into an exit code, printing any error as a
// single "Error: ..." line.
func execute(ctx context.Context, a *app, args []string) int {
	root := newRootCmd(a)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var exit *exitCodeError
		if errors.As(err, &exit) {
			return exit.code // a command run by exec ended that way; it said what it had to say
		}
		fmt.Fprintln(a.stderr, "Error: "+oneLine(err))
		return 1
	}
	return 0
}

// oneLine folds a multi-line message (a server's or cobra's) into one line, so that the output keeps
// its promise of exactly one error line.
func oneLine(err error) string {
	if errors.Is(err, context.Canceled) {
		return "interrupted"
	}
	fields := strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' })
	parts := fields[:0]
	for _, f := range fields {
		if f = strings.TrimSpace(f); f != "" {
			parts = append(parts, f)
		}
	}
	return strings.Join(parts, " ")
}
