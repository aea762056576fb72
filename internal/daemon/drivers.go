package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"tandem/client"
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
			CgroupParent:   cgroupParent(cfg.Dir),
			PrepareNetwork: plugVeths(networks),
			CRIU:           cfg.CRIU,
			CRIUTimeout:    cfg.CRIUTimeout,
		})
		if err != nil {
			return nil, fmt.Errorf("container driver: %w", err)
		}
		if networks != nil {
			reg.Register(container.Name, containerNICs{c, networks}, "container")
		} else {
			reg.Register(container.Name, c, "container")
		}
		opts := vm.Options{
			Dir:    filepath.Join(cfg.Dir, "vm"),
			RunDir: filepath.Join(RunDir(cfg.Dir), "v"),
			Images: images,
			Accel:  cfg.Accel,
			User:   cfg.VMUser,
			// Beside the containers' cgroups: one parent bounds every instance of this daemon.
			CgroupParent: cgroupParent(cfg.Dir),
			// The daemon re-executes itself to keep each VM's console log capped.
			ConsoleLogHelper: "/proc/self/exe",
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
		if networks != nil {
			reg.Register("vm", vmNICs{v, networks}, "vm")
		} else {
			reg.Register("vm", v, "vm")
		}
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

// cgroupParent is "tandem" for the default state dir and "tandem-<hash of the dir>" for others:
// daemons sharing a kernel (the test labs' hosts) must not share the cgroups of a container that
// moved between them, which keeps its id.
func cgroupParent(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil && abs == client.DefaultDir {
		return "tandem"
	}
	return "tandem-" + filepath.Base(RunDir(dir))
}

// plugVeth puts one NIC's veth into a container's network namespace.
func plugVeth(ctx context.Context, networks *network.Manager, h *driver.Handle, name string, dev map[string]string, netnsPath string) error {
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
	return nil
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
			if err := plugVeth(ctx, networks, h, name, dev, netnsPath); err != nil {
				return err
			}
		}
		return nil
	}
}

// containerNICs adds NIC hotplug to the container driver: a veth into the running container's
// network namespace, removed by deleting its host end (which takes the pair with it).
type containerNICs struct {
	*container.Driver
	networks *network.Manager
}

func (c containerNICs) AddNIC(ctx context.Context, h *driver.Handle, name string, dev map[string]string) error {
	return plugVeth(ctx, c.networks, h, name, dev, c.NetnsPath(h))
}

func (c containerNICs) RemoveNIC(ctx context.Context, h *driver.Handle, name string, dev map[string]string) error {
	return c.networks.Unplug(ctx, network.DeviceNetwork(dev), h.Spec.Name, name)
}

// vmNICs adds NIC hotplug to the VM driver: a tap on the bridge, then a virtio-net device over QMP.
type vmNICs struct {
	*vm.Driver
	networks *network.Manager
}

func (v vmNICs) AddNIC(ctx context.Context, h *driver.Handle, name string, dev map[string]string) error {
	tap, mac, err := vmTaps{v.networks}.SetupTap(ctx, h, name, dev)
	if err != nil {
		return err
	}
	if err := v.AttachNIC(ctx, h, name, tap, mac); err != nil {
		v.networks.Unplug(ctx, network.DeviceNetwork(dev), h.Spec.Name, name)
		return err
	}
	return nil
}

func (v vmNICs) RemoveNIC(ctx context.Context, h *driver.Handle, name string, dev map[string]string) error {
	if err := v.DetachNIC(ctx, h, name); err != nil {
		return err
	}
	return v.networks.Unplug(ctx, network.DeviceNetwork(dev), h.Spec.Name, name)
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
