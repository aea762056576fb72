package vm

import (
	"context"
	"fmt"
	"os"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/vm/qemucmd"
	"tandem/internal/errdefs"
	"tandem/internal/qmp"
)

// imageSource describes an image and, for a rootfs image, returns its unpacked tree. A disk image
// (info.DiskFormat set) is never unpacked: its disk becomes the base under the overlay.
func (d *Driver) imageSource(ctx context.Context, ref string) (string, driver.ImageInfo, error) {
	if di, ok := d.opts.Images.(driver.DiskImages); ok {
		info, err := di.Describe(ctx, ref)
		if err != nil {
			return "", info, err
		}
		if info.DiskFormat != "" {
			return "", info, nil
		}
	}
	return d.opts.Images.Rootfs(ctx, ref)
}

// baseFormat is the format of the image's base disk: a disk image's own, else our ext4 in qcow2.
// A raw disk stays raw: the overlay names its format, so converting would only cost time and space.
func baseFormat(info driver.ImageInfo) string {
	if info.DiskFormat != "" {
		return info.DiskFormat
	}
	return "qcow2"
}

// extractDisk writes a disk image's disk to path, the base its instances' overlays share.
func (d *Driver) extractDisk(ctx context.Context, ref, path string, info driver.ImageInfo) error {
	di, ok := d.opts.Images.(driver.DiskImages)
	if !ok {
		return errdefs.Unavailable("vm: image %s is a disk image, which this host's image store cannot hand out", shortFP(info.Fingerprint))
	}
	format, err := di.ExtractDisk(ctx, ref, path)
	if err != nil {
		return fmt.Errorf("vm: extracting the disk image: %w", err)
	}
	if format != info.DiskFormat {
		os.Remove(path)
		return fmt.Errorf("vm: disk image %s came out as %s, not %s", shortFP(info.Fingerprint), format, info.DiskFormat)
	}
	return nil
}

// agentPortTimeout bounds the QMP question of whether a guest holds the agent port.
const agentPortTimeout = 5 * time.Second

// diskGuestAgent fails at once, rather than waiting out agentWait, when a VM booted from a disk
// image has no agent: we put none in such a guest, so one runs only if the image brought it, and
// then it holds the agent's virtio-serial port open (QEMU reports that as the frontend being open).
func (d *Driver) diskGuestAgent(ctx context.Context, p paths) error {
	ctx, cancel := context.WithTimeout(ctx, agentPortTimeout)
	defer cancel()
	var chardevs []struct {
		Label        string `json:"label"`
		FrontendOpen bool   `json:"frontend-open"`
	}
	err := withQMP(ctx, p, func(c *qmp.Client) error { return c.Execute(ctx, "query-chardev", nil, &chardevs) })
	if err != nil {
		return fmt.Errorf("vm: asking qemu about the guest agent port: %w", err)
	}
	for _, cd := range chardevs {
		if cd.Label == qemucmd.AgentChardev && cd.FrontendOpen {
			return nil
		}
	}
	return errdefs.Unavailable("vm: no guest agent: this VM boots its disk image's own system, and nothing in it has opened the agent port %s (exec, file and guest info need tandem-agent running in the guest)", qemucmd.AgentPortName)
}
