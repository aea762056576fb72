package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() {
	register(newTrustCmd)
	register(newRemoteCmd)
}

func newTrustCmd(a *app) *cobra.Command {
	cmd := groupCmd("trust", "Manage which hosts and clients may call this host over HTTPS")
	cmd.AddCommand(&cobra.Command{
		Use: "add NAME", Short: "Issue a one-time token that lets host NAME join (see 'tandem remote add')", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			tok, err := c.CreateTrustToken(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(tok, func(w io.Writer) error {
				fmt.Fprintf(w, "%s\n", tok.Token)
				fmt.Fprintf(a.stderr, "Token for %s, valid once until %s\n", args[0], formatTime(tok.ExpiresAt))
				return nil
			})
		},
	}, &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List trusted certificates", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.GetTrusted(ctx(cmd))
			if err != nil {
				return err
			}
			return a.render(list, func(w io.Writer) error {
				t := newTable(w, "NAME", "FINGERPRINT")
				for _, e := range list {
					t.row(e.Name, e.Fingerprint)
				}
				return t.flush()
			})
		},
	}, &cobra.Command{
		Use: "remove FINGERPRINT", Aliases: []string{"rm"}, Short: "Revoke a certificate", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.RevokeTrust(ctx(cmd), args[0])
		},
	})
	return cmd
}

func newRemoteCmd(a *app) *cobra.Command {
	cmd := groupCmd("remote", "Manage the other hosts this host can move instances to")
	var token string
	add := &cobra.Command{
		Use: "add NAME [https://ADDR:PORT] --token TOKEN", Short: "Trust another host with a token it issued ('tandem trust add')",
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				return fmt.Errorf("--token is required: run 'tandem trust add' on the other host")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			req := api.RemotesPost{Name: args[0], Token: token}
			if len(args) == 2 {
				req.URL = args[1]
			}
			rm, err := c.AddRemote(ctx(cmd), req)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Remote %s added (%s, certificate %s)\n", rm.Name, rm.URL, shortFP(rm.Fingerprint))
			return nil
		},
	}
	add.Flags().StringVar(&token, "token", "", "the join token the other host issued")
	cmd.AddCommand(add, &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List remotes", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			list, err := c.GetRemotes(ctx(cmd))
			if err != nil {
				return err
			}
			return a.render(list, func(w io.Writer) error {
				t := newTable(w, "NAME", "URL", "FINGERPRINT")
				for _, r := range list {
					t.row(r.Name, r.URL, shortFP(r.Fingerprint))
				}
				return t.flush()
			})
		},
	}, &cobra.Command{
		Use: "remove NAME", Aliases: []string{"rm"}, Short: "Forget a remote", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteRemote(ctx(cmd), args[0])
		},
	})
	return cmd
}
