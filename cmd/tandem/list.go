package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() {
	register(newListCmd)
	register(newInfoCmd)
}

func newListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List instances, VMs and containers alike",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.GetInstances(ctx(cmd))
			if err != nil {
				return err
			}
			if list == nil {
				list = []api.Instance{} // print [] rather than null
			}
			sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
			return a.render(list, func(w io.Writer) error {
				t := newTable(w, "NAME", "TYPE", "STATUS", "IPV4", "IMAGE", "DESIRED")
				for _, in := range list {
					var ips []string
					for _, n := range in.NICs {
						if n.IPv4 != "" {
							ips = append(ips, n.IPv4+" ("+n.Name+")")
						}
					}
					t.row(in.Name, in.Type, in.Status, strings.Join(ips, ", "), in.Image, in.DesiredPower)
				}
				return t.flush()
			})
		},
	}
}

func newInfoCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "info NAME",
		Short: "Show an instance in detail",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := c.GetInstance(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(in, func(w io.Writer) error { printInstance(w, in); return nil })
		},
	}
}

// printInstance is the readable default of `info`: yaml-like, but with labels for people. What a
// guest or a user may have written goes through printable.
func printInstance(w io.Writer, in *api.Instance) {
	fmt.Fprintf(w, "Name: %s\n", in.Name)
	fmt.Fprintf(w, "Type: %s\n", in.Type)
	fmt.Fprintf(w, "Image: %s\n", printable(in.Image))
	fmt.Fprintf(w, "Status: %s\n", in.Status)
	if in.StatusError != "" {
		fmt.Fprintf(w, "Status error: %s\n", printable(in.StatusError))
	}
	fmt.Fprintf(w, "Desired power: %s\n", in.DesiredPower)
	fmt.Fprintf(w, "Driver: %s\n", in.Driver)
	fmt.Fprintf(w, "Created: %s\n", formatTime(in.CreatedAt))
	if in.Operation != "" {
		fmt.Fprintf(w, "Operation: %s\n", in.Operation)
	}
	if r := in.Root; r != nil {
		shared := ""
		if r.Shared {
			shared = " (shared pool)"
		}
		fmt.Fprintf(w, "Root disk: volume %s in pool %s%s\n", r.Volume, r.Pool, shared)
	}
	if len(in.Config) > 0 {
		fmt.Fprintln(w, "Config:")
		kvLines(w, "  ", in.Config)
	}
	if g := in.Guest; g != nil {
		fmt.Fprintf(w, "Guest: %s, hostname %s, addresses %s\n", printable(g.OS), printable(g.Hostname), printable(strings.Join(g.IPs, ", ")))
	}
	if len(in.NICs) > 0 {
		fmt.Fprintln(w, "Network:")
		for _, n := range in.NICs {
			fmt.Fprintf(w, "  %s: %s on %s (%s)\n", printable(n.Name), printable(orDash(n.IPv4)), printable(n.Network), printable(n.MAC))
		}
	}
	if len(in.Devices) > 0 {
		fmt.Fprintln(w, "Devices:")
		for _, name := range sortedKeys(in.Devices) {
			fmt.Fprintf(w, "  %s:\n", printable(name))
			kvLines(w, "    ", in.Devices[name])
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
