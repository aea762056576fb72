package main

import (
	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newEventsCmd) }

func newEventsCmd(a *app) *cobra.Command {
	var types []string
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow the daemon's events, one JSON object per line, until interrupted",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			err = c.GetEvents(ctx(cmd), types, func(ev api.Event) error { return printJSON(a.stdout, ev) })
			// Ctrl-C is how one stops following: a clean exit, not an error.
			if ctx(cmd).Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringSliceVar(&types, "type", nil, "event types to follow: lifecycle, operation (default: all)")
	return cmd
}
