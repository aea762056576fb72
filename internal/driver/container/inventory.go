package container

import (
	"context"
	"os"
	"path/filepath"

	"tandem/internal/driver"
)

var _ driver.Inventory = (*Driver)(nil)

// InstanceIDs lists the containers this driver has a bundle for (a bundle with a state file).
func (d *Driver) InstanceIDs(context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.opts.Dir)
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
		if _, err := os.Stat(filepath.Join(d.opts.Dir, e.Name(), "state.json")); err == nil {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}
