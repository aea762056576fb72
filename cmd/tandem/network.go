package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newNetworkCmd) }

func newNetworkCmd(a *app) *cobra.Command {
	cmd := groupCmd("network", "Manage networks shared by containers and VMs")
	var subnet, uplink string
	var nat, hostAccess bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a network: a bridge with NAT, DHCP and DNS",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			req := api.NetworksPost{Name: args[0], Subnet: subnet, Uplink: uplink, HostAccess: hostAccess}
			if cmd.Flags().Changed("nat") {
				req.NAT = &nat
			}
			n, err := c.CreateNetwork(ctx(cmd), req)
			if err != nil {
				return err
			}
			if n.Uplink != "" {
				fmt.Fprintf(a.stdout, "Created network %s (%s, uplink %s)\n", n.Name, n.Subnet, n.Uplink)
			} else {
				fmt.Fprintf(a.stdout, "Created network %s (%s)\n", n.Name, n.Subnet)
			}
			return nil
		},
	}
	create.Flags().StringVar(&subnet, "subnet", "", "IPv4 subnet, e.g. 10.20.0.0/24 (default: a free /24)")
	create.Flags().BoolVar(&nat, "nat", true, "masquerade traffic leaving the network")
	create.Flags().BoolVar(&hostAccess, "host-access", false,
		"let instances reach every service of this host (default: only DHCP, DNS and ping)")
	create.Flags().StringVar(&uplink, "uplink", "",
		"enslave this unconfigured host interface to the bridge: hosts with the same network (name and --subnet) share its L2 segment")
	cmd.AddCommand(create, &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List networks",
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			nets, err := c.GetNetworks(ctx(cmd))
			if err != nil {
				return err
			}
			return a.render(nets, func(w io.Writer) error {
				t := newTable(w, "NAME", "SUBNET", "GATEWAY", "NAT", "UPLINK", "USED BY")
				for _, n := range nets {
					t.row(n.Name, n.Subnet, n.Gateway, fmt.Sprint(n.NAT), orDash(n.Uplink), fmt.Sprint(len(n.UsedBy)))
				}
				return t.flush()
			})
		},
	}, &cobra.Command{
		Use:   "info NAME",
		Short: "Show a network",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			n, err := c.GetNetwork(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(n, func(w io.Writer) error {
				fmt.Fprintf(w, "Name: %s\nBridge: %s\nSubnet: %s\nGateway: %s\nNAT: %v\nHost access: %v\nUplink: %s\nDNS domain: %s\nUsed by: %s\n",
					n.Name, n.Bridge, n.Subnet, n.Gateway, n.NAT, n.HostAccess, orDash(n.Uplink), n.DNSDomain, strings.Join(n.UsedBy, ", "))
				return nil
			})
		},
	}, &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete a network no instance uses",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteNetwork(ctx(cmd), args[0])
		},
	})
	return cmd
}
