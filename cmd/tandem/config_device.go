package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
)

func newConfigDeviceCmd(a *app) *cobra.Command {
	cmd := groupCmd("device", "Add, remove and list an instance's devices")
	cmd.AddCommand(newDeviceAddCmd(a), newDeviceRemoveCmd(a), newDeviceListCmd(a))
	return cmd
}

func newDeviceAddCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "add NAME DEVNAME TYPE [key=value...]",
		Short:   "Add a device",
		Example: "  tandem config device add v1 eth1 nic network=lab\n  tandem config device add v1 data1 disk pool=default source=data1",
		Args:    minArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, dev, typ := args[0], args[1], args[2]
			settings, err := parseKeyValues(args[3:])
			if err != nil {
				return err
			}
			if t, ok := settings["type"]; ok && t != typ {
				return fmt.Errorf("type given twice: %q and type=%q", typ, t)
			}
			settings["type"] = typ
			in, err := a.instance(cmd, name)
			if err != nil {
				return err
			}
			// PATCH replaces a device of the same name: check first, so that "add" never overwrites.
			if _, exists := in.Devices[dev]; exists {
				return fmt.Errorf("device %q already exists on %s", dev, name)
			}
			if err := a.patch(cmd, name, api.InstancePatch{Devices: map[string]map[string]string{dev: settings}}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Device %s added to %s\n", dev, name)
			return nil
		},
	}
}

func newDeviceRemoveCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "remove NAME DEVNAME",
		Aliases: []string{"rm"},
		Short:   "Remove a device",
		Args:    exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, dev := args[0], args[1]
			in, err := a.instance(cmd, name)
			if err != nil {
				return err
			}
			if _, exists := in.Devices[dev]; !exists {
				return fmt.Errorf("device %q not found on %s", dev, name)
			}
			// A nil map is sent as JSON null: "remove this device".
			if err := a.patch(cmd, name, api.InstancePatch{Devices: map[string]map[string]string{dev: nil}}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Device %s removed from %s\n", dev, name)
			return nil
		},
	}
}

func newDeviceListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "list NAME",
		Aliases: []string{"ls"},
		Short:   "List an instance's devices",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := a.instance(cmd, args[0])
			if err != nil {
				return err
			}
			devs := in.Devices
			if devs == nil {
				devs = api.Devices{}
			}
			return a.render(devs, func(w io.Writer) error {
				t := newTable(w, "NAME", "TYPE", "SETTINGS")
				for _, name := range sortedKeys(devs) {
					var rest []string
					for _, k := range sortedKeys(devs[name]) {
						if k != "type" {
							rest = append(rest, k+"="+devs[name][k])
						}
					}
					t.row(name, devs[name]["type"], strings.Join(rest, ","))
				}
				return t.flush()
			})
		},
	}
}
