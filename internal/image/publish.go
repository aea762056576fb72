package image

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"tandem/internal/driver"
	"tandem/internal/progress"
)

// Publish makes a new image from an instance's root filesystem. It keeps what the instance's own
// image said about itself (OS, supported types, kernel command line, shutdown signal) and returns
// the new image's fingerprint. The ids the instance's files carry on the host are mapped back.
func (s *Store) Publish(ctx context.Context, fromImage string, src driver.PublishSource, description string, aliases []string) (string, error) {
	for _, a := range aliases {
		if err := ValidateAlias(a); err != nil {
			return "", err
		}
	}
	meta := Metadata{OS: "unknown", Architecture: HostArchitecture(), Types: []string{TypeContainer, TypeVM}}
	if parent, err := s.Get(fromImage); err == nil {
		meta = parent.Metadata
	}
	meta.Description = description
	meta.CreatedAt = time.Now().UTC().Truncate(time.Second)
	if src.ShutdownSignal != "" {
		meta.ShutdownSignal = src.ShutdownSignal
	}
	out, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "publish-*.tar.zst")
	if err != nil {
		return "", err
	}
	defer os.Remove(out.Name())
	progress.Report(ctx, 5, "packing root filesystem")
	err = PackRootfs(ctx, out, src.Rootfs, &meta, PackOptions{SkipContents: DefaultSkipContents, IDBase: src.IDBase, IDSize: src.IDSize})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	progress.Report(ctx, 70, "importing")
	img, err := s.ImportFile(ctx, out.Name(), ImportOptions{Aliases: aliases})
	if err != nil {
		return "", err
	}
	return img.Fingerprint, nil
}
