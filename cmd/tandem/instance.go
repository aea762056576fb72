package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"tandem/api"
	"tandem/internal/network"
)

func init() {
	register(func(a *app) *cobra.Command { return newCreateCmd(a, true) })
	register(func(a *app) *cobra.Command { return newCreateCmd(a, false) })
	register(func(a *app) *cobra.Command { return newStateCmd(a, api.ActionStart, "Start", "Starting") })
	register(func(a *app) *cobra.Command { return newStateCmd(a, api.ActionStop, "Stop", "Stopping") })
	register(func(a *app) *cobra.Command { return newStateCmd(a, api.ActionRestart, "Restart", "Restarting") })
	register(func(a *app) *cobra.Command { return newStateCmd(a, api.ActionPause, "Pause", "Pausing") })
	register(func(a *app) *cobra.Command { return newStateCmd(a, api.ActionResume, "Resume", "Resuming") })
	register(newDeleteCmd)
}

// newCreateCmd builds `launch` (create and start) or `create` (create only): one request either way,
// Start tells them apart.
func newCreateCmd(a *app, launch bool) *cobra.Command {
	var (
		vm           bool
		config       []string
		devices      []string
		pool         string
		existingRoot bool
	)
	use, short, verb, done := "create", "Create an instance without starting it", "Creating", "Created"
	if launch {
		use, short, verb, done = "launch", "Create and start an instance", "Launching", "Launched"
	}
	cmd := &cobra.Command{
		Use:   use + " IMAGE NAME",
		Short: short,
		Example: "  tandem " + use + " busybox c1\n" +
			"  tandem " + use + " busybox v1 --vm -c limits.memory=256MiB --device eth0,type=nic,network=" + network.DefaultName + "\n" +
			"  tandem " + use + " busybox c2 --storage fast -c limits.disk=2GiB",
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := parseKeyValues(config)
			if err != nil {
				return err
			}
			devs, err := parseDevices(devices)
			if err != nil {
				return err
			}
			if pool != "" {
				if devs == nil {
					devs = api.Devices{}
				}
				if devs["root"] != nil {
					return fmt.Errorf("--storage and a device named root: give the pool in one of them")
				}
				devs["root"] = map[string]string{"type": "disk", "path": "/", "pool": pool}
			}
			req := api.InstancesPost{
				Name: args[1], Image: args[0], Type: api.TypeContainer,
				Config: cfg, Devices: devs, Start: launch, ExistingRoot: existingRoot,
			}
			if vm {
				req.Type = api.TypeVM
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.CreateInstance(ctx(cmd), req)
			if err != nil {
				return err
			}
			if _, err := a.wait(ctx(cmd), c, op, verb+" "+req.Name); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s %s\n", done, req.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&vm, "vm", false, "make a virtual machine instead of a container")
	// StringArray, not StringSlice: a value may itself hold commas.
	f.StringArrayVarP(&config, "config", "c", nil, "config key=value (repeatable)")
	f.StringArrayVarP(&devices, "device", "d", nil, "device NAME,type=TYPE,key=value... (repeatable)")
	f.StringVarP(&pool, "storage", "s", "", "storage pool of the root disk (default: the default pool)")
	f.BoolVar(&existingRoot, "existing-root", false,
		"use the root volume another host made for an instance of this name on a shared pool (one runs at a time)")
	return cmd
}

// newStateCmd builds one power command. Names are handled in order and the first failure stops the
// run, so that the one error line names what went wrong.
func newStateCmd(a *app, action, title, verb string) *cobra.Command {
	var req api.InstanceStatePut
	cmd := &cobra.Command{
		Use:   action + " NAME...",
		Short: title + " instances",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			if req.Timeout < 0 {
				return fmt.Errorf("invalid --timeout %d: want seconds >= 0", req.Timeout)
			}
			req.Action = action
			for _, name := range args {
				op, err := c.UpdateInstanceState(ctx(cmd), name, req)
				if err != nil {
					return err
				}
				if _, err := a.wait(ctx(cmd), c, op, verb+" "+name); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	switch action {
	case api.ActionStop, api.ActionRestart:
		f.BoolVarP(&req.Force, "force", "f", false, "kill at once instead of shutting down cleanly")
		f.IntVar(&req.Timeout, "timeout", 0, "seconds to wait for a clean shutdown before forcing (0: the daemon's default)")
	}
	if action == api.ActionStop {
		f.BoolVar(&req.Stateful, "stateful", false, "save the running state so that the next start resumes it")
	}
	return cmd
}

func newDeleteCmd(a *app) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME...",
		Aliases: []string{"rm"},
		Short:   "Delete instances",
		Args:    minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, name := range args {
				op, err := c.DeleteInstance(ctx(cmd), name, force)
				if err != nil {
					return err
				}
				if _, err := a.wait(ctx(cmd), c, op, "Deleting "+name); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop a running instance first instead of refusing")
	return cmd
}
