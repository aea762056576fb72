package fsutil

import (
	"os"
	"path/filepath"
)

// SubdirsWith lists the names of dir's subdirectories that valid accepts and that hold a file
// named marker (a driver's instance directories that got as far as their state file). A missing
// dir has none.
func SubdirsWith(dir, marker string, valid func(name string) error) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || valid(e.Name()) != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, e.Name(), marker)); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
