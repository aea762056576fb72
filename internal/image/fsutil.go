package image

import (
	"encoding/json"
	"os"

	"tandem/internal/fsutil"
)

// writeJSONAtomic is writeFileAtomic for an indented JSON document.
func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(path, append(data, '\n'), 0o644)
}

// syncFile fsyncs an existing file by path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
