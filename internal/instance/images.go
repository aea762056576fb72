package instance

import "log/slog"

// Images is what the control plane needs of the image store: finding the image an instance is made
// from, and holding a reference so the image is not deleted under it.
type Images interface {
	// Resolve returns the fingerprint of ref (alias, fingerprint or prefix) if it can run as instanceType.
	Resolve(ref, instanceType string) (string, error)
	Ref(ref, user string) error
	Unref(ref, user string) error
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
