package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newConfigCmd) }

func newConfigCmd(a *app) *cobra.Command {
	cmd := groupCmd("config", "Read and change instance config and devices")
	cmd.AddCommand(newConfigSetCmd(a), newConfigGetCmd(a), newConfigUnsetCmd(a), newConfigShowCmd(a),
		newConfigDeviceCmd(a))
	return cmd
}

func newConfigSetCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "set NAME key=value...",
		Short: "Set config keys (also: set NAME KEY VALUE)",
		Args:  minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			words := args[1:]
			// Accept the two-word form too, handy for values a shell would mangle after "=".
			if len(words) == 2 && !strings.Contains(words[0], "=") {
				words = []string{words[0] + "=" + words[1]}
			}
			kv, err := parseKeyValues(words)
			if err != nil {
				return err
			}
			patch := api.InstancePatch{Config: map[string]*string{}}
			for k, v := range kv {
				patch.Config[k] = &v
			}
			return a.patch(cmd, args[0], patch)
		},
	}
}

func newConfigUnsetCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "unset NAME key...",
		Short: "Remove config keys",
		Args:  minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			// A nil value is sent as JSON null, which PATCH reads as "remove this key".
			patch := api.InstancePatch{Config: map[string]*string{}}
			for _, k := range args[1:] {
				if k == "" || strings.Contains(k, "=") {
					return fmt.Errorf("invalid key %q", k)
				}
				patch.Config[k] = nil
			}
			return a.patch(cmd, args[0], patch)
		},
	}
}

func newConfigGetCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME key",
		Short: "Print one config value (empty when unset)",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := a.instance(cmd, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, in.Config[args[1]])
			return nil
		},
	}
}

// instanceConfig is what `config show` prints: the part of an instance a user edits.
type instanceConfig struct {
	Config  map[string]string `json:"config" yaml:"config"`
	Devices api.Devices       `json:"devices" yaml:"devices"`
}

func newConfigShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show an instance's config and devices (yaml unless --format json)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in, err := a.instance(cmd, args[0])
			if err != nil {
				return err
			}
			v := instanceConfig{Config: in.Config, Devices: in.Devices}
			if v.Config == nil {
				v.Config = map[string]string{}
			}
			if v.Devices == nil {
				v.Devices = api.Devices{}
			}
			return a.render(v, func(w io.Writer) error { return printYAML(w, v) })
		},
	}
}

func (a *app) instance(cmd *cobra.Command, name string) (*api.Instance, error) {
	c, err := a.client()
	if err != nil {
		return nil, err
	}
	return c.GetInstance(ctx(cmd), name)
}

func (a *app) patch(cmd *cobra.Command, name string, p api.InstancePatch) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	_, err = c.PatchInstance(ctx(cmd), name, p)
	return err
}
