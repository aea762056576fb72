package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newSnapshotCmd) }

func newSnapshotCmd(a *app) *cobra.Command {
	cmd := groupCmd("snapshot", "Snapshot instances and restore them (root disks on storage pools)")
	var stateful bool
	create := &cobra.Command{
		Use:   "create INSTANCE SNAP",
		Short: "Snapshot an instance's root disk (a running one is paused meanwhile)",
		Long: "Snapshot an instance's root disk as SNAP. A running instance is paused while its disk is\n" +
			"copied. --stateful (containers) saves its memory too: restoring the snapshot resumes it.",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.CreateInstanceSnapshot(ctx(cmd), args[0], api.InstanceSnapshotsPost{Name: args[1], Stateful: stateful})
			if _, err := a.waitStorage(cmd, c, op, err, "Snapshotting "+args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Created snapshot %s of %s\n", args[1], args[0])
			return nil
		},
	}
	create.Flags().BoolVar(&stateful, "stateful", false, "save the running state (memory) too; containers only")
	cmd.AddCommand(create, &cobra.Command{
		Use: "list INSTANCE", Aliases: []string{"ls"}, Short: "List an instance's snapshots", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.GetInstanceSnapshots(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(list, func(w io.Writer) error {
				t := newTable(w, "NAME", "CREATED", "STATEFUL", "DISK SIZE")
				for _, s := range list {
					t.row(s.Name, formatTime(s.CreatedAt), fmt.Sprint(s.Stateful), storageSize(s.Size))
				}
				return t.flush()
			})
		},
	}, &cobra.Command{
		Use:   "restore INSTANCE SNAP",
		Short: "Bring an instance back to a snapshot (a running one is stopped, restored and started)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.RestoreInstanceSnapshot(ctx(cmd), args[0], args[1])
			if _, err := a.waitStorage(cmd, c, op, err, "Restoring "+args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Restored %s to snapshot %s\n", args[0], args[1])
			return nil
		},
	}, &cobra.Command{
		Use: "delete INSTANCE SNAP", Aliases: []string{"rm"}, Short: "Delete an instance's snapshot", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.DeleteInstanceSnapshot(ctx(cmd), args[0], args[1])
			if _, err := a.waitStorage(cmd, c, op, err, "Deleting snapshot "+args[1]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Deleted snapshot %s of %s\n", args[1], args[0])
			return nil
		},
	})
	return cmd
}
