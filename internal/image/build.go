package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"

	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

// BuildOptions select an offline builder for Store.Build.
type BuildOptions struct {
	Kind    string   // "busybox" or "debian"
	Release string   // debian: default bookworm
	Mirror  string   // debian: default the host's apt mirror
	WorkDir string   // debian: where the rootfs is assembled
	Aliases []string // default: "busybox", or "debian-<release>" and "debian"
}

// Build runs a builder, imports its tarball and points the aliases at the result (moving them from
// an older build). Building the same busybox twice gives the same image, which is then just returned.
func (s *Store) Build(ctx context.Context, opts BuildOptions) (*Image, error) {
	switch opts.Kind {
	case "busybox":
		if opts.Aliases == nil {
			opts.Aliases = []string{"busybox"}
		}
	case "debian":
		if opts.Release == "" {
			opts.Release = "bookworm"
		}
		if opts.Aliases == nil {
			opts.Aliases = []string{"debian-" + opts.Release, "debian"}
		}
	default:
		return nil, errdefs.Invalid("unknown image builder %q (want busybox or debian)", opts.Kind)
	}
	for _, a := range opts.Aliases {
		if err := ValidateAlias(a); err != nil {
			return nil, err
		}
	}
	// Build next to the store by default: same filesystem, and Open clears leftovers of a crash.
	if opts.WorkDir == "" {
		opts.WorkDir = filepath.Join(s.root, tmpDir)
	}
	out, err := os.CreateTemp(filepath.Join(s.root, tmpDir), "build-*.tar.zst")
	if err != nil {
		return nil, err
	}
	path := out.Name()
	out.Close()
	defer os.Remove(path)
	// The builder reports 0-90%, the import the rest.
	bctx := scaledProgress(ctx, 0, 90)
	if opts.Kind == "busybox" {
		_, err = BuildBusybox(bctx, BusyboxOptions{Output: path})
	} else {
		_, err = BuildDebian(bctx, DebianOptions{Release: opts.Release, Mirror: opts.Mirror, WorkDir: opts.WorkDir, Output: path})
	}
	if err != nil {
		return nil, err
	}
	fp, err := fileSHA256(path)
	if err != nil {
		return nil, err
	}
	img, err := s.ImportFile(scaledProgress(ctx, 90, 10), path, ImportOptions{})
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		img, err = s.Get(fp)
	}
	if err != nil {
		return nil, err
	}
	for _, a := range opts.Aliases {
		if err := s.SetAlias(a, img.Fingerprint); err != nil {
			return nil, err
		}
	}
	progress.Report(ctx, 100, "image ready")
	return s.Get(img.Fingerprint)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// scaledProgress maps a sub-task's 0-100% onto base..base+span of ctx's reporter.
func scaledProgress(ctx context.Context, base, span int) context.Context {
	return progress.With(ctx, func(p int, msg string) {
		progress.Report(ctx, base+p*span/100, msg)
	})
}
