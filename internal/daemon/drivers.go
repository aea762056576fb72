package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"tandem/internal/driver"
	"tandem/internal/driver/container"
	"tandem/internal/driver/fake"
	"tandem/internal/driver/vm"
	"tandem/internal/network"
)

// registerDrivers sets up the drivers this daemon runs instances with.
func registerDrivers(cfg Config, images driver.Images, networks *network.Manager) (*driver.Registry, error) {
	reg := driver.NewRegistry()
	switch cfg.Driver {
	case "fake":
		d, err := fake.New(fake.Options{Dir: filepath.Join(cfg.Dir, "fake"), Delay: cfg.FakeDelay})
		if err != nil {
			return nil, err
		}
		reg.Register("fake", d, "container", "vm")
	case "auto", "":
		c, err := container.New(container.Options{
			Dir:            filepath.Join(cfg.Dir, "containers"),
			RunDir:         filepath.Join(RunDir(cfg.Dir), "c"),
			Images:         images,
			IDFirst:        cfg.IDMapBase,
			PrepareNetwork: plugVeths(networks),
		})
		if err != nil {
			return nil, fmt.Errorf("container driver: %w", err)
		}
		reg.Register(container.Name, c, "container")
		opts := vm.Options{
			Dir:    filepath.Join(cfg.Dir, "vm"),
			RunDir: filepath.Join(RunDir(cfg.Dir), "v"),
			Images: images,
			Accel:  cfg.Accel,
			// Without managed networks a VM gets QEMU's user-mode network.
			UserNetwork: networks == nil,
		}
		if networks != nil {
			opts.Networks = vmTaps{networks}
		}
		v, err := vm.New(opts)
		if err != nil {
			return nil, fmt.Errorf("vm driver: %w", err)
		}
		reg.Register("vm", v, "vm")
		for _, name := range reg.Names() {
			d, _ := reg.ByName(name)
			if info := d.Info(context.Background()); !info.Available {
				slog.Warn("driver unavailable", "driver", name, "reason", info.Reason)
			}
		}
	default:
		return nil, fmt.Errorf("unknown driver setting %q (want auto or fake)", cfg.Driver)
	}
	return reg, nil
}

// plugVeths returns the container driver's hook that puts each NIC's veth into the container's
// network namespace once it exists.
func plugVeths(networks *network.Manager) func(ctx context.Context, h *driver.Handle, netnsPath string) error {
	return func(ctx context.Context, h *driver.Handle, netnsPath string) error {
		for name, dev := range h.Spec.Devices {
			if dev["type"] != "nic" {
				continue
			}
			if networks == nil {
				return fmt.Errorf("NIC %s: networking is disabled on this host", name)
			}
			net := network.DeviceNetwork(dev)
			lease, err := networks.Lease(ctx, net, h.Spec.Name, name)
			if err != nil {
				return fmt.Errorf("NIC %s: %w", name, err)
			}
			ifName := dev["name"]
			if ifName == "" {
				ifName = name
			}
			if err := networks.PlugVeth(ctx, net, lease, netnsPath, ifName, ""); err != nil {
				return fmt.Errorf("NIC %s: %w", name, err)
			}
		}
		return nil
	}
}

// vmTaps puts VM NICs on managed networks: a tap per NIC on the network's bridge, with the MAC the
// network assigned (DHCP hands out the address by it).
type vmTaps struct{ networks *network.Manager }

func (v vmTaps) SetupTap(ctx context.Context, h *driver.Handle, nic string, dev map[string]string) (string, string, error) {
	net := network.DeviceNetwork(dev)
	lease, err := v.networks.Lease(ctx, net, h.Spec.Name, nic)
	if err != nil {
		return "", "", err
	}
	tap := v.networks.HostIfName(h.Spec.Name, nic)
	if err := v.networks.PlugTap(ctx, net, lease, tap); err != nil {
		return "", "", err
	}
	return tap, lease.MAC, nil
}

func (v vmTaps) TeardownTap(ctx context.Context, h *driver.Handle, nic string) error {
	return v.networks.Unplug(ctx, network.DeviceNetwork(h.Spec.Devices[nic]), h.Spec.Name, nic)
}
