package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newCopyCmd) }

func newCopyCmd(a *app) *cobra.Command {
	var req api.InstanceCopyPost
	var bandwidth string
	cmd := &cobra.Command{
		Use:   "copy INSTANCE NEW [--target REMOTE] [--storage POOL]",
		Short: "Make a new stopped instance from a stopped one, here or on another host",
		Long: "The copy has the instance's image, configuration, devices and root disk, and its own MACs and\n" +
			"addresses. Snapshots and attached volumes are not copied. Within one btrfs pool the root is an\n" +
			"instant snapshot; to a remote it is sent (rsync for containers, the whole disk for VMs).",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[1]
			var err error
			if req.MaxBandwidth, err = parseBandwidth(bandwidth); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.CopyInstance(ctx(cmd), args[0], req)
			if err != nil {
				return err
			}
			where := ""
			if req.Target != "" {
				where = " on " + req.Target
			}
			final, err := a.wait(ctx(cmd), c, op, fmt.Sprintf("Copying %s to %s%s", args[0], req.Name, where))
			if err != nil {
				return err
			}
			if final.Status != api.OpSuccess {
				return fmt.Errorf("%s", final.Err)
			}
			fmt.Fprintf(a.stdout, "Copied %s to %s%s\n", args[0], req.Name, where)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Target, "target", "", "remote to copy to (tandem remote add); default: this host")
	cmd.Flags().StringVar(&req.Storage, "storage", "", "pool for the copy's root disk")
	cmd.Flags().StringVar(&bandwidth, "bandwidth", "", "cap a copy to a remote, bytes per second (e.g. 50MiB)")
	return cmd
}
