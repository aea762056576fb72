package container

import (
	"context"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

var _ driver.Publisher = (*Driver)(nil)

// PublishSource gives a stopped container's root filesystem for publishing as an image, with the
// uid/gid mapping its files carry on the host (nothing to undo for a privileged container).
func (d *Driver) PublishSource(ctx context.Context, h *driver.Handle) (driver.PublishSource, error) {
	if err := checkID(h.ID); err != nil {
		return driver.PublishSource{}, err
	}
	status, err := d.State(ctx, h)
	if err != nil {
		return driver.PublishSource{}, err
	}
	if status != driver.StatusStopped {
		return driver.PublishSource{}, errdefs.Conflict("container %s is %s: stop it before publishing", h.Spec.Name, status)
	}
	st, err := d.load(h.ID)
	if err != nil {
		return driver.PublishSource{}, err
	}
	dir, done, err := d.mountedRoot(ctx, h)
	if err != nil {
		return driver.PublishSource{}, err
	}
	return driver.PublishSource{Rootfs: dir, IDBase: st.IDs.Base, IDSize: st.IDs.Size,
		ShutdownSignal: st.ShutdownSignal, Done: done}, nil
}
