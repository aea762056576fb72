package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"tandem/api"
)

func init() { register(newHostCmd) }

func newHostCmd(a *app) *cobra.Command {
	cmd := groupCmd("host", "Show what this host is and what it can run")
	cmd.AddCommand(&cobra.Command{
		Use:   "info",
		Short: "Show the host: resources, KVM, component versions, drivers",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			h, err := c.GetHost(ctx(cmd))
			if err != nil {
				return err
			}
			return a.render(h, func(w io.Writer) error { printHost(w, h); return nil })
		},
	})
	return cmd
}

func printHost(w io.Writer, h *api.Host) {
	fmt.Fprintf(w, "Hostname: %s\n", h.Hostname)
	fmt.Fprintf(w, "Kernel: %s\n", h.Kernel)
	fmt.Fprintf(w, "Arch: %s\n", h.Arch)
	fmt.Fprintf(w, "CPU: %d cores", h.CPU.Cores)
	if h.CPU.Model != "" {
		fmt.Fprintf(w, " (%s)", h.CPU.Model)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Memory: %s available of %s\n", humanBytes(h.Memory.Available), humanBytes(h.Memory.Total))
	fmt.Fprintf(w, "Disk: %s free of %s at %s\n", humanBytes(h.Disk.Free), humanBytes(h.Disk.Total), h.Disk.Path)
	kvm := "absent"
	switch {
	case h.KVM.Usable:
		kvm = "usable"
	case h.KVM.Present:
		kvm = "present, not usable"
	}
	if h.KVM.Reason != "" {
		kvm += " (" + h.KVM.Reason + ")"
	}
	fmt.Fprintf(w, "KVM: %s\n", kvm)
	fmt.Fprintln(w, "Versions:")
	for _, v := range []struct{ name, version string }{
		{"qemu", h.Versions.QEMU}, {"runc", h.Versions.Runc}, {"criu", h.Versions.CRIU},
	} {
		if v.version == "" {
			v.version = "not found"
		}
		fmt.Fprintf(w, "  %s: %s\n", v.name, v.version)
	}
	if len(h.Drivers) > 0 {
		fmt.Fprintln(w, "Drivers:")
		for _, d := range h.Drivers {
			state := "available"
			if !d.Available {
				state = "unavailable"
				if d.Reason != "" {
					state += ": " + d.Reason
				}
			}
			fmt.Fprintf(w, "  %s (%s) %s: %s\n", d.Name, d.Type, d.Version, state)
			if len(d.Capabilities) > 0 {
				fmt.Fprintf(w, "    capabilities: %s\n", strings.Join(d.Capabilities, ", "))
			}
			if why, ok := d.Missing["checkpoint"]; ok {
				fmt.Fprintf(w, "    checkpoint: %s\n", why)
			} else if slices.Contains(d.Capabilities, "checkpoint") {
				fmt.Fprintln(w, "    checkpoint: available")
			}
		}
	}
	al := h.Allocated
	fmt.Fprintln(w, "Allocated:")
	fmt.Fprintf(w, "  instances: %d (%d running)\n", al.Instances, al.Running)
	fmt.Fprintf(w, "  cpu: %d\n", al.CPU)
	fmt.Fprintf(w, "  memory: %s\n", humanBytes(al.Memory))
	fmt.Fprintf(w, "  disk: %s\n", humanBytes(al.Disk))
}
