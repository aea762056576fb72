package instance

import (
	"context"
	"io"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

// running returns the driver and handle of a running instance.
func (m *Manager) running(ctx context.Context, name string) (driver.Driver, *driver.Handle, error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, err
	}
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return nil, nil, err
	}
	st, err := drv.State(ctx, rec.Handle)
	if err != nil {
		return nil, nil, err
	}
	if st != driver.StatusRunning {
		return nil, nil, errdefs.Conflict("instance %q is %s, not running", name, apiStatus(st))
	}
	return drv, rec.Handle, nil
}

// ExecTarget checks that a command can run in an instance now and returns how to run it. Exec does
// not take the instance lock: commands may run while other operations (a snapshot, a config change)
// go on, as they can on any host.
func (m *Manager) ExecTarget(ctx context.Context, name string) (func(context.Context, driver.ExecRequest) (int, error), error) {
	drv, h, err := m.running(ctx, name)
	if err != nil {
		return nil, err
	}
	ex, ok := drv.(driver.Execer)
	if !ok {
		return nil, errdefs.Invalid("instance %q cannot run commands (its driver has no exec)", name)
	}
	return func(ctx context.Context, req driver.ExecRequest) (int, error) { return ex.Exec(ctx, h, req) }, nil
}

// Console attaches to a running instance's console.
func (m *Manager) Console(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	drv, h, err := m.running(ctx, name)
	if err != nil {
		return nil, err
	}
	c, ok := drv.(driver.Consoler)
	if !ok {
		return nil, errdefs.Invalid("instance %q has no console", name)
	}
	return c.Console(ctx, h)
}

// ConsoleLog returns what an instance's console printed, running or not.
func (m *Manager) ConsoleLog(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	rec, drv, err := m.recordAndDriver(name)
	if err != nil {
		return nil, err
	}
	c, ok := drv.(driver.Consoler)
	if !ok {
		return nil, errdefs.Invalid("instance %q has no console", name)
	}
	return c.ConsoleLog(ctx, rec.Handle)
}
