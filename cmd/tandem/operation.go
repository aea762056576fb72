package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newOperationCmd) }

func newOperationCmd(a *app) *cobra.Command {
	cmd := groupCmd("operation", "List, follow and cancel the daemon's slow operations")
	cmd.Aliases = []string{"op"}
	cmd.AddCommand(newOpListCmd(a), newOpShowCmd(a), newOpWaitCmd(a), newOpCancelCmd(a))
	return cmd
}

func newOpListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List operations",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ops, err := c.GetOperations(ctx(cmd))
			if err != nil {
				return err
			}
			if ops == nil {
				ops = []api.Operation{}
			}
			sort.SliceStable(ops, func(i, j int) bool { return ops[i].CreatedAt.Before(ops[j].CreatedAt) })
			return a.render(ops, func(w io.Writer) error {
				t := newTable(w, "ID", "DESCRIPTION", "STATUS", "PROGRESS", "RESOURCES", "CREATED")
				for _, o := range ops {
					t.row(o.ID, o.Description, o.Status, fmt.Sprintf("%d%%", o.Progress.Percent),
						strings.Join(o.Resources, ","), formatTime(o.CreatedAt))
				}
				return t.flush()
			})
		},
	}
}

func newOpShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Show an operation (yaml unless --format json)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.GetOperation(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(op, func(w io.Writer) error { return printYAML(w, op) })
		},
	}
}

func newOpWaitCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "wait ID",
		Short: "Wait for an operation to end; fails if it failed (prints it when --format is given)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.GetOperation(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			what := op.Description
			if what == "" {
				what = "Waiting"
			}
			final, err := a.wait(ctx(cmd), c, op, what)
			if err != nil {
				return err
			}
			// Silent by default like the other waiting commands; the final state (with metadata such
			// as a migration's downtime) on request.
			if a.format != "" {
				return a.render(final, func(w io.Writer) error { return printYAML(w, final) })
			}
			return nil
		},
	}
}

func newOpCancelCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel an operation",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			_, err = c.CancelOperation(ctx(cmd), args[0])
			return err
		},
	}
}
