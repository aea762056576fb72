package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"tandem/api"
	"tandem/internal/units"
)

func init() { register(newMoveCmd) }

func newMoveCmd(a *app) *cobra.Command {
	var req api.InstanceMovePost
	var bandwidth string
	var lazy bool
	cmd := &cobra.Command{
		Use:   "move INSTANCE --target REMOTE [--live] [--lazy=false] [--bandwidth 50MiB]",
		Short: "Move an instance to another host, keeping its name, MAC and addresses",
		Long: "Move a stopped instance (cold), or with --live a running one without stopping it. The\n" +
			"instance's root is copied unless it is on a shared pool; --bandwidth caps the transfer per second.\n" +
			"A live container moves post-copy (lazy pages: it runs on the target while its memory follows)\n" +
			"whenever both hosts can; --lazy=false turns that off, --lazy requires it.",
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("lazy") {
				req.Lazy = &lazy
			}
			var err error
			if req.MaxBandwidth, err = parseBandwidth(bandwidth); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.MoveInstance(ctx(cmd), args[0], req)
			if err != nil {
				return err
			}
			final, err := a.wait(ctx(cmd), c, op, fmt.Sprintf("Moving %s to %s", args[0], req.Target))
			if err != nil {
				return err
			}
			if final.Status != api.OpSuccess {
				return fmt.Errorf("%s", final.Err)
			}
			fmt.Fprintln(a.stdout, describeMove(args[0], req.Target, final))
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Target, "target", "", "remote to move to (tandem remote add)")
	cmd.Flags().BoolVar(&req.Live, "live", false, "move a running instance without stopping it")
	// Three states: absent (automatic), --lazy (required), --lazy=false (never).
	cmd.Flags().BoolVar(&lazy, "lazy", false, "live containers: post-copy memory, automatic when both hosts can; --lazy requires it, --lazy=false turns it off")
	cmd.Flags().StringVar(&bandwidth, "bandwidth", "", "cap the transfer, bytes per second (e.g. 50MiB)")
	cmd.MarkFlagRequired("target")
	return cmd
}

// parseBandwidth reads --bandwidth ("": no cap).
func parseBandwidth(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--bandwidth: %w", err)
	}
	return int64(n), nil
}

// describeMove says how a move went, from the operation's result.
func describeMove(name, target string, op *api.Operation) string {
	var res api.MigrationResult
	if raw, err := json.Marshal(op.Metadata["result"]); err == nil {
		json.Unmarshal(raw, &res)
	}
	ms := func(n int64) string { return (time.Duration(n) * time.Millisecond).String() }
	s := fmt.Sprintf("Moved %s to %s (%s) in %s", name, target, res.Mode, ms(res.TotalMillis))
	if res.FreezeMillis > 0 {
		s += ", frozen " + ms(res.FreezeMillis)
	}
	if res.PagesMillis > 0 {
		s += ", memory followed in " + ms(res.PagesMillis)
	}
	if res.DowntimeMillis > 0 {
		s += ", downtime " + ms(res.DowntimeMillis)
	}
	if res.BytesSent > 0 {
		s += ", sent " + units.FormatSize(uint64(res.BytesSent))
	}
	for _, n := range res.Notes {
		s += "\n  note: " + n
	}
	return s
}
