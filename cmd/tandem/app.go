package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"tandem/client"
)

// app holds what every command shares: the global flags, the output writers and the client.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	dir            string
	format         string
	// tty is true when stderr is a terminal: only then are progress bars drawn.
	tty bool
	cl  *client.Client
}

func newApp(stdout, stderr io.Writer) *app {
	return &app{stdout: stdout, stderr: stderr, tty: isTerminal(stderr)}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// client connects lazily, so that --help and argument errors never need a daemon.
func (a *app) client() (*client.Client, error) {
	if a.cl == nil {
		c, err := client.New(a.dir)
		if err != nil {
			return nil, err
		}
		a.cl = c
	}
	return a.cl, nil
}

// commands lists the top-level command constructors. Each area registers its own from an init() in
// its own file, so that adding `image`, `storage`, `network`, `exec`, `console` or `move` means adding
// one file and touching nothing else.
var commands []func(*app) *cobra.Command

func register(f func(*app) *cobra.Command) { commands = append(commands, f) }

// Output formats for --format.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "tandem",
		Short: "Run VMs and system containers side by side",
		Long: "tandem drives tandemd, which runs virtual machines and system containers side by side\n" +
			"behind one REST API.",
		// Errors are printed once, by execute, as a single line; usage is shown only on request.
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch a.format {
			case "", formatTable, formatJSON, formatYAML:
				return nil
			}
			return fmt.Errorf("invalid --format %q: want table, json or yaml", a.format)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownCommand(cmd, args[0])
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.CompletionOptions.HiddenDefaultCmd = true

	dir := os.Getenv("TANDEM_DIR")
	if dir == "" {
		dir = client.DefaultDir
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.dir, "dir", dir, "tandemd state directory holding unix.socket (env TANDEM_DIR)")
	pf.StringVar(&a.format, "format", "", "output format for listings and details: table, json or yaml")

	for _, f := range commands {
		root.AddCommand(f(a))
	}
	return root
}

// unknownCommand is the single-line error for a mistyped (sub)command, with cobra's suggestion if any.
func unknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default, which it only sets lazily
	}
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += "; did you mean " + strings.Join(quoteAll(s), " or ") + "?"
	}
	return fmt.Errorf("%s (see '%s --help')", msg, cmd.CommandPath())
}

func quoteAll(words []string) []string {
	out := make([]string, len(words))
	for i, w := range words {
		out[i] = fmt.Sprintf("%q", w)
	}
	return out
}

// groupCmd is a command that only holds subcommands (config, operation, host, ...): bare, it shows
// its help; with an unknown word, it fails instead of silently showing help.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return unknownCommand(cmd, args[0])
		},
	}
}

// Argument-count checks that name the expected usage in one line, unlike cobra's generic message.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError(cmd, args)
		}
		return nil
	}
}

func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError(cmd, args)
		}
		return nil
	}
}

func rangeArgs(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return usageError(cmd, args)
		}
		return nil
	}
}

func usageError(cmd *cobra.Command, args []string) error {
	return fmt.Errorf("wrong number of arguments (%d); usage: %s", len(args), strings.TrimSuffix(cmd.UseLine(), " [flags]"))
}

// ctx returns the command's context (cancelled on Ctrl-C).
func ctx(cmd *cobra.Command) context.Context {
	if c := cmd.Context(); c != nil {
		return c
	}
	return context.Background()
}
