package vm

import (
	"context"
	"fmt"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
	"tandem/internal/qmp"
)

// hotplugPorts is how many free pcie-root-ports a q35 VM starts with (start.go).
const hotplugPorts = 4

// AttachNIC hot-plugs a virtio-net NIC on an existing tap into a running VM. The IDs follow the
// boot-time NICs' (nic-NAME on netdev net-nic-NAME), so DetachNIC handles both.
func (d *Driver) AttachNIC(ctx context.Context, h *driver.Handle, name, tap, mac string) error {
	id := "nic-" + name
	if err := d.canHotplug(h, "NIC "+name); err != nil {
		return err
	}
	return d.qmpRunning(ctx, h, func(c *qmp.Client) error {
		netdev := map[string]any{"type": "tap", "id": "net-" + id, "ifname": tap, "script": "no", "downscript": "no"}
		if err := c.Execute(ctx, "netdev_add", netdev, nil); err != nil {
			return err
		}
		// Take the first free root port: a port in use refuses the device.
		var last error
		for i := 0; i < hotplugPorts; i++ {
			last = c.DeviceAdd(ctx, map[string]any{"driver": "virtio-net-pci", "id": id, "netdev": "net-" + id,
				"mac": mac, "bus": fmt.Sprintf("hotplug%d", i)})
			if last == nil {
				return nil
			}
		}
		c.Execute(ctx, "netdev_del", map[string]any{"id": "net-" + id}, nil)
		return fmt.Errorf("no free hotplug port for NIC %s: %w", name, last)
	})
}

// DetachNIC unplugs a NIC; the guest must let it go (DEVICE_DELETED), which DeviceDel waits for.
func (d *Driver) DetachNIC(ctx context.Context, h *driver.Handle, name string) error {
	id := "nic-" + name
	if err := d.canHotplug(h, "NIC "+name); err != nil {
		return err
	}
	return d.qmpRunning(ctx, h, func(c *qmp.Client) error {
		if err := c.DeviceDel(ctx, id); err != nil {
			return err
		}
		return c.Execute(ctx, "netdev_del", map[string]any{"id": "net-" + id}, nil)
	})
}

// canHotplug refuses devices on a running microvm: its virtio-mmio transports are fixed at boot
// (q35 plugs into root ports, pc into its ACPI-hotplug PCI bus, boot devices included).
func (d *Driver) canHotplug(h *driver.Handle, what string) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	cfg, err := loadConfig(d.paths(h.ID))
	if err != nil {
		return err
	}
	if cfg.Machine == qemucmd.MicroVM {
		return errdefs.Invalid("cannot hotplug or unplug %s: a microvm VM has no hotplug; stop it first, or use vm.machine=q35 or pc", what)
	}
	return nil
}
