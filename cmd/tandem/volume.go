package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newVolumeCmd) }

// newVolumeCmd attaches storage volumes to instances: a disk device named after the volume, which
// goes live into a running container (mounted at PATH) or VM (a virtio disk).
func newVolumeCmd(a *app) *cobra.Command {
	cmd := groupCmd("volume", "Attach storage volumes to instances and detach them")
	var pool string
	var readonly bool
	attach := &cobra.Command{
		Use: "attach INSTANCE VOLUME [PATH]", Short: "Attach a volume (live if the instance runs)", Args: rangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			dev := map[string]string{"type": "disk", "source": args[1]}
			if pool != "" {
				dev["pool"] = pool
			}
			if len(args) == 3 {
				dev["path"] = args[2]
			}
			if readonly {
				dev["readonly"] = "true"
			}
			if err := a.patch(cmd, args[0], api.InstancePatch{Devices: map[string]map[string]string{args[1]: dev}}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Volume %s attached to %s\n", args[1], args[0])
			return nil
		},
	}
	attach.Flags().StringVar(&pool, "pool", "", "the volume's storage pool (default: default)")
	attach.Flags().BoolVar(&readonly, "readonly", false, "attach read-only (several instances may then share it)")
	cmd.AddCommand(attach, &cobra.Command{
		Use: "detach INSTANCE VOLUME", Short: "Detach a volume (live if the instance runs)", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := a.instance(cmd, args[0])
			if err != nil {
				return err
			}
			if d := in.Devices[args[1]]; d == nil || d["type"] != "disk" {
				return fmt.Errorf("instance %s has no volume %s attached", args[0], args[1])
			}
			if err := a.patch(cmd, args[0], api.InstancePatch{Devices: map[string]map[string]string{args[1]: nil}}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Volume %s detached from %s\n", args[1], args[0])
			return nil
		},
	})
	return cmd
}
