package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"tandem/internal/driver"
	"tandem/internal/driver/container"
	"tandem/internal/driver/fake"
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
		if info := c.Info(context.Background()); !info.Available {
			slog.Warn("container driver unavailable", "reason", info.Reason)
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
