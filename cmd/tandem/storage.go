package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
	"tandem/client"
)

func init() { register(newStorageCmd) }

func newStorageCmd(a *app) *cobra.Command {
	cmd := groupCmd("storage", "Manage storage pools and the volumes in them")
	cmd.AddCommand(newStoragePoolCmd(a), newStorageVolumeCmd(a))
	return cmd
}

// storageSize prints a size, or "-" for none (a plain directory has no limit).
func storageSize(n uint64) string {
	if n == 0 {
		return "-"
	}
	return humanBytes(n)
}

func newStoragePoolCmd(a *app) *cobra.Command {
	cmd := groupCmd("pool", "Manage storage pools: dir, btrfs, shared")
	var source, size string
	create := &cobra.Command{
		Use:   "create NAME DRIVER",
		Short: "Create a storage pool (DRIVER dir, btrfs or shared)",
		Long: "Create a storage pool.\n\n" +
			"  dir     a directory: --source PATH, or one inside tandemd's state directory\n" +
			"  btrfs   an existing btrfs mount (--source PATH), or a loop file tandem makes (--size 10GiB)\n" +
			"  shared  the mount point of a shared filesystem every host mounts (--source PATH)",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.CreateStoragePool(ctx(cmd), api.StoragePoolsPost{Name: args[0], Driver: args[1], Source: source, Size: size})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Created storage pool %s (%s at %s)\n", p.Name, p.Driver, p.Path)
			return nil
		},
	}
	create.Flags().StringVar(&source, "source", "", "path of the pool: a directory, a btrfs mount or a shared mount")
	create.Flags().StringVar(&size, "size", "", "size of a btrfs loop file, e.g. 10GiB")

	cmd.AddCommand(create, &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List storage pools", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			pools, err := c.GetStoragePools(ctx(cmd))
			if err != nil {
				return err
			}
			return a.render(pools, func(w io.Writer) error {
				t := newTable(w, "NAME", "DRIVER", "PATH", "TOTAL", "USED", "FREE", "VOLUMES", "STATUS")
				for _, p := range pools {
					t.row(p.Name, p.Driver, p.Path, storageSize(p.Total), storageSize(p.Used), storageSize(p.Free),
						fmt.Sprint(p.Volumes), p.Status)
				}
				return t.flush()
			})
		},
	}, &cobra.Command{
		Use: "info NAME", Short: "Show a storage pool", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.GetStoragePool(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(p, func(w io.Writer) error {
				fmt.Fprintf(w, "Name: %s\nDriver: %s\n", p.Name, p.Driver)
				if p.Source != "" {
					fmt.Fprintf(w, "Source: %s\n", p.Source)
				}
				fmt.Fprintf(w, "Path: %s\n", p.Path)
				if p.Size != 0 {
					fmt.Fprintf(w, "Loop file size: %s\n", humanBytes(p.Size))
				}
				fmt.Fprintf(w, "Status: %s\nTotal: %s\nUsed: %s\nFree: %s\nVolumes: %d\nCreated: %s\n", p.Status,
					storageSize(p.Total), storageSize(p.Used), storageSize(p.Free), p.Volumes, formatTime(p.CreatedAt))
				return nil
			})
		},
	}, &cobra.Command{
		Use: "delete NAME", Aliases: []string{"rm"}, Short: "Delete a storage pool that holds no volumes", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteStoragePool(ctx(cmd), args[0])
		},
	})
	return cmd
}

// storageUsers prints a volume's users: "c1, c2 (ro)".
func storageUsers(v *api.StorageVolume) string {
	var out []string
	for _, at := range v.Attachments {
		s := at.Instance
		if at.ReadOnly {
			s += " (ro)"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

func newStorageVolumeCmd(a *app) *cobra.Command {
	cmd := groupCmd("volume", "Manage storage volumes: create, resize, snapshot, restore, copy")
	cmd.AddCommand(newStorageVolumeCreateCmd(a), newStorageVolumeListCmd(a), newStorageVolumeInfoCmd(a),
		newStorageVolumeResizeCmd(a), newStorageVolumeSnapshotCmd(a), newStorageVolumeRestoreCmd(a),
		newStorageVolumeCopyCmd(a), newStorageVolumeDeleteCmd(a), newStorageSnapshotDeleteCmd(a))
	return cmd
}

// waitStorage waits for a storage operation, drawing progress on a terminal.
func (a *app) waitStorage(cmd *cobra.Command, c *client.Client, op *api.Operation, err error, what string) (*api.Operation, error) {
	if err != nil {
		return nil, err
	}
	return a.wait(ctx(cmd), c, op, what)
}

func newStorageVolumeCreateCmd(a *app) *cobra.Command {
	var size, content string
	cmd := &cobra.Command{
		Use:   "create POOL NAME",
		Short: "Create a custom volume: filesystem (ext4) or block (qcow2)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.CreateStorageVolume(ctx(cmd), args[0], api.StorageVolumesPost{Name: args[1], ContentType: content, Size: size})
			if _, err := a.waitStorage(cmd, c, op, err, "Creating volume "+args[1]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Created volume %s in pool %s\n", args[1], args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "size of the volume, e.g. 1GiB (required)")
	cmd.Flags().StringVar(&content, "type", api.ContentFilesystem, "content type: filesystem or block")
	return cmd
}

func newStorageVolumeListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "list POOL", Aliases: []string{"ls"}, Short: "List a pool's volumes (all types)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			vols, err := c.GetStorageVolumes(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(vols, func(w io.Writer) error {
				t := newTable(w, "TYPE", "NAME", "CONTENT", "FORMAT", "SIZE", "SNAPSHOTS", "USED BY", "STATE")
				for i := range vols {
					v := &vols[i]
					t.row(v.Type, v.Name, v.ContentType, v.Format, storageSize(v.Size), fmt.Sprint(len(v.Snapshots)),
						storageUsers(v), v.State)
				}
				return t.flush()
			})
		},
	}
}

func newStorageVolumeInfoCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "info POOL NAME", Short: "Show a volume (NAME, or TYPE/NAME for instance and image volumes)", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			v, err := c.GetStorageVolume(ctx(cmd), args[0], args[1])
			if err != nil {
				return err
			}
			return a.render(v, func(w io.Writer) error {
				fmt.Fprintf(w, "Name: %s\nType: %s\nPool: %s\nContent type: %s\nFormat: %s\nSize: %s\n",
					v.Name, v.Type, v.Pool, v.ContentType, v.Format, storageSize(v.Size))
				if v.Usage != 0 {
					fmt.Fprintf(w, "Usage: %s\n", humanBytes(v.Usage))
				}
				if v.Base != "" {
					fmt.Fprintf(w, "Base image: %s\n", v.Base)
				}
				state := v.State
				if v.Pending != "" {
					state += " (" + v.Pending + " under way)"
				}
				fmt.Fprintf(w, "State: %s\nCreated: %s\n", state, formatTime(v.CreatedAt))
				fmt.Fprintf(w, "Used by:")
				if len(v.Attachments) == 0 {
					fmt.Fprintf(w, " -\n")
				} else {
					fmt.Fprintln(w)
					for _, at := range v.Attachments {
						mode := "read-write"
						if at.ReadOnly {
							mode = "read-only"
						}
						fmt.Fprintf(w, "  %s (%s", at.Instance, mode)
						if at.Host != "" {
							fmt.Fprintf(w, ", host %s", at.Host)
						}
						fmt.Fprintln(w, ")")
					}
				}
				fmt.Fprintf(w, "Snapshots:")
				if len(v.Snapshots) == 0 {
					fmt.Fprintf(w, " -\n")
					return nil
				}
				fmt.Fprintln(w)
				snaps, err := c.GetStorageVolumeSnapshots(ctx(cmd), args[0], args[1])
				if err != nil {
					return err
				}
				for _, s := range snaps {
					fmt.Fprintf(w, "  %s (%s, %s)\n", s.Name, storageSize(s.Size), formatTime(s.CreatedAt))
				}
				return nil
			})
		},
	}
}

func newStorageVolumeResizeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "resize POOL NAME SIZE", Short: "Grow (or, offline, shrink) a volume, e.g. to 2GiB", Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.ResizeStorageVolume(ctx(cmd), args[0], args[1], args[2])
			if _, err := a.waitStorage(cmd, c, op, err, "Resizing volume "+args[1]); err != nil {
				return err
			}
			v, err := c.GetStorageVolume(ctx(cmd), args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Volume %s is now %s\n", args[1], humanBytes(v.Size))
			return nil
		},
	}
}

func newStorageVolumeSnapshotCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "snapshot POOL NAME SNAP", Short: "Snapshot a volume's data as SNAP", Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.CreateStorageVolumeSnapshot(ctx(cmd), args[0], args[1], args[2])
			if _, err := a.waitStorage(cmd, c, op, err, "Snapshotting volume "+args[1]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Created snapshot %s of volume %s\n", args[2], args[1])
			return nil
		},
	}
}

func newStorageVolumeRestoreCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "restore POOL NAME SNAP", Short: "Bring a volume's data back to snapshot SNAP (stop its users first)", Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.RestoreStorageVolume(ctx(cmd), args[0], args[1], args[2])
			if _, err := a.waitStorage(cmd, c, op, err, "Restoring volume "+args[1]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Restored volume %s from snapshot %s\n", args[1], args[2])
			return nil
		},
	}
}

func newStorageVolumeCopyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "copy POOL NAME TARGETPOOL [TARGETNAME]",
		Short: "Copy a volume (not its snapshots) to a pool, under the same name or TARGETNAME",
		Args:  rangeArgs(3, 4),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			target := ""
			if len(args) == 4 {
				target = args[3]
			}
			op, err := c.CopyStorageVolume(ctx(cmd), args[0], args[1], args[2], target)
			final, err := a.waitStorage(cmd, c, op, err, "Copying volume "+args[1])
			if err != nil {
				return err
			}
			name := target
			if v, ok := final.Metadata["volume"].(string); ok && v != "" {
				name = strings.TrimPrefix(v, "custom/")
			}
			if name == "" {
				name = args[1]
			}
			fmt.Fprintf(a.stdout, "Copied volume %s to %s in pool %s\n", args[1], name, args[2])
			return nil
		},
	}
}

func newStorageVolumeDeleteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "delete POOL NAME", Aliases: []string{"rm"}, Short: "Delete a volume and its snapshots (refused while attached)",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteStorageVolume(ctx(cmd), args[0], args[1])
		},
	}
}

func newStorageSnapshotDeleteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "delete-snapshot POOL NAME SNAP", Short: "Delete one snapshot of a volume", Args: exactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteStorageVolumeSnapshot(ctx(cmd), args[0], args[1], args[2])
		},
	}
}
