package vm

import (
	"context"
	"path/filepath"

	"tandem/internal/driver"
	"tandem/internal/fsutil"
)

var _ driver.Inventory = (*Driver)(nil)

// InstanceIDs lists the VMs this driver has an instance directory for (one with its config).
func (d *Driver) InstanceIDs(context.Context) ([]string, error) {
	return fsutil.SubdirsWith(filepath.Join(d.opts.Dir, "instances"), filepath.Base(d.paths("x").config), checkID)
}
