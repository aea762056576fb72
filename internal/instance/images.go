package instance

import (
	"context"
	"log/slog"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/operations"
	"tandem/internal/store"
)

// Images is what the control plane needs of the image store: finding the image an instance is made
// from, and holding a reference so the image is not deleted under it.
type Images interface {
	// Resolve returns the fingerprint of ref (alias, fingerprint or prefix) if it can run as instanceType.
	Resolve(ref, instanceType string) (string, error)
	Ref(ref, user string) error
	Unref(ref, user string) error
	// Publish makes an image from an instance's filesystem, keeping what fromImage says of itself.
	Publish(ctx context.Context, fromImage string, src driver.PublishSource, description string, aliases []string) (string, error)
}

// Publish turns a stopped instance into a new image, in an operation whose metadata names it.
func (m *Manager) Publish(ctx context.Context, name string, aliases []string) (*api.Operation, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if m.images == nil {
		return nil, errdefs.Unavailable("this host has no image store")
	}
	var pub driver.Publisher
	var rec *store.InstanceRecord
	check := func() error {
		r, drv, err := m.recordAndDriver(name)
		if err != nil {
			return err
		}
		p, ok := drv.(driver.Publisher)
		if !ok {
			return errdefs.Invalid("%s instances cannot be published yet", r.Type)
		}
		st, err := drv.State(ctx, r.Handle)
		if err != nil {
			return err
		}
		if st != driver.StatusStopped {
			return errdefs.Conflict("instance %q is %s: stop it before publishing", name, apiStatus(st))
		}
		pub, rec = p, r
		return nil
	}
	return m.runLocked(name, "Publishing instance "+name, check, func(ctx context.Context, op *operations.Op) error {
		if err := m.holdRoot(ctx, rec); err != nil { // its root may be mounted to be read
			return err
		}
		defer m.letRootGo(name)
		src, err := pub.PublishSource(ctx, rec.Handle)
		if err != nil {
			return err
		}
		fp, err := m.images.Publish(ctx, rec.Handle.Spec.Image, src, "published from instance "+name, aliases)
		if src.Done != nil {
			if derr := src.Done(); derr != nil && err == nil {
				err = derr
			}
		}
		if err != nil {
			return err
		}
		op.SetMetadata("fingerprint", fp)
		return nil
	})
}

// SetImages makes instance creation check images and keep references; without it the image is taken
// as given (the fake driver's tests).
func (m *Manager) SetImages(images Images) { m.images = images }

// imageUser is how an instance is named among an image's users.
func imageUser(instance string) string { return "instance/" + instance }

func (m *Manager) unrefImage(fingerprint, instance string) {
	if m.images == nil {
		return
	}
	if err := m.images.Unref(fingerprint, imageUser(instance)); err != nil {
		slog.Error("release image reference", "instance", instance, "image", fingerprint, "err", err)
	}
}
