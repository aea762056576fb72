package container

import (
	"context"

	"tandem/internal/driver"
	"tandem/internal/fsutil"
)

var _ driver.Inventory = (*Driver)(nil)

// InstanceIDs lists the containers this driver has a bundle for (one with its state file).
func (d *Driver) InstanceIDs(context.Context) ([]string, error) {
	return fsutil.SubdirsWith(d.opts.Dir, "state.json", checkID)
}
