package vm

import (
	"context"
	"fmt"

	"tandem/internal/driver"
	"tandem/internal/qmp"
)

var _ driver.DiskHotplugger = (*Driver)(nil)

// AddDisk hot-plugs a volume as a virtio disk on a free root port; its serial is the device name,
// so the guest finds it under /dev/disk/by-id/virtio-NAME.
func (d *Driver) AddDisk(ctx context.Context, h *driver.Handle, name string, disk driver.Disk) error {
	node, id := "vol-"+name, "disk-"+name
	format := disk.Format
	if format == "" {
		format = "raw"
	}
	if err := d.canHotplug(h, "disk "+name); err != nil {
		return err
	}
	if err := d.giveFile(disk.Source); err != nil {
		return fmt.Errorf("vm: disk %s: handing it to the qemu user: %w", name, err)
	}
	if err := d.checkReachable(ctx, disk.Source); err != nil {
		return err
	}
	return d.qmpRunning(ctx, h, func(c *qmp.Client) error {
		err := c.BlockdevAdd(ctx, map[string]any{"driver": format, "node-name": node, "read-only": disk.ReadOnly,
			"file": map[string]any{"driver": "file", "filename": disk.Source}})
		if err != nil {
			return err
		}
		var last error
		for i := 0; i < hotplugPorts; i++ {
			last = c.DeviceAdd(ctx, map[string]any{"driver": "virtio-blk-pci", "id": id, "drive": node,
				"serial": name, "bus": fmt.Sprintf("hotplug%d", i)})
			if last == nil {
				return nil
			}
		}
		c.BlockdevDel(ctx, node)
		return fmt.Errorf("no free hotplug port for disk %s: %w", name, last)
	})
}

// RemoveDisk unplugs the disk (the guest lets go of it) and closes the file.
func (d *Driver) RemoveDisk(ctx context.Context, h *driver.Handle, name string, _ driver.Disk) error {
	if err := d.canHotplug(h, "disk "+name); err != nil {
		return err
	}
	return d.qmpRunning(ctx, h, func(c *qmp.Client) error {
		if err := c.DeviceDel(ctx, "disk-"+name); err != nil {
			return err
		}
		return c.BlockdevDel(ctx, "vol-"+name)
	})
}
