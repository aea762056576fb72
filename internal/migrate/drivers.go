package migrate

import (
	"context"

	"tandem/internal/driver"
	"tandem/internal/driver/container"
	"tandem/internal/driver/vm"
	"tandem/internal/errdefs"
)

// What this package needs of the container driver (the daemon's wrapper embeds it).
type containerMover interface {
	container.MigrationSource
	container.MigrationDestination
	MarkMoved(ctx context.Context, h *driver.Handle) error
	UnmountRoot(ctx context.Context, h *driver.Handle) error
	MigrationFeatures(ctx context.Context) container.MigrationFeatures
	RootTree(ctx context.Context, h *driver.Handle) (dir string, release func() error, err error)
	// Lazy (post-copy) moves.
	LazyDumpRefusal() string
	LazyRestoreRefusal(h *driver.Handle) string
	WaitLazyPages(ctx context.Context, h *driver.Handle) error
}

// What this package needs of the VM driver.
type vmMover interface {
	PrepareOutgoing(ctx context.Context, h *driver.Handle) error
	MigrateOut(ctx context.Context, h *driver.Handle, o vm.MigrateOpts) (vm.MigrationResult, error)
	AbortOutgoing(ctx context.Context, h *driver.Handle) error
	Release(ctx context.Context, h *driver.Handle) error
	CanRun(ctx context.Context, h *driver.Handle, o vm.IncomingOpts) error
	PrepareIncoming(ctx context.Context, h *driver.Handle, o vm.IncomingOpts) (vm.IncomingInfo, error)
	FinishIncoming(ctx context.Context, h *driver.Handle) error
	AbortIncoming(ctx context.Context, h *driver.Handle) error
	StoppedDisk(ctx context.Context, h *driver.Handle) (path, format string, err error)
}

func containerOf(d driver.Driver) (containerMover, error) {
	if c, ok := d.(containerMover); ok {
		return c, nil
	}
	return nil, errdefs.Unavailable("this host's container driver cannot migrate")
}

func vmOf(d driver.Driver) (vmMover, error) {
	if v, ok := d.(vmMover); ok {
		return v, nil
	}
	return nil, errdefs.Unavailable("this host's VM driver cannot migrate")
}

func containerAdoptOpts(rootfs string) container.AdoptOpts {
	return container.AdoptOpts{Rootfs: rootfs}
}

func containerRestoreOpts(dir string) container.RestoreOpts { return container.RestoreOpts{Dir: dir} }
