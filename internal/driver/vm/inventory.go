package vm

import (
	"context"
	"os"
	"path/filepath"

	"tandem/internal/driver"
)

var _ driver.Inventory = (*Driver)(nil)

// InstanceIDs lists the VMs this driver has an instance directory for (one with its config).
func (d *Driver) InstanceIDs(context.Context) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(d.opts.Dir, "instances"))
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if !e.IsDir() || checkID(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(d.paths(e.Name()).config); err == nil {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}
