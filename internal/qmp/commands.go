package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Run states reported by query-status (QAPI RunState).
const (
	StateRunning       = "running"
	StatePaused        = "paused"         // after stop (a -S start is prelaunch instead)
	StatePrelaunch     = "prelaunch"      // started with -S, never run
	StateInMigrate     = "inmigrate"      // waiting for an incoming migration
	StatePostMigrate   = "postmigrate"    // source after a completed migration
	StateFinishMigrate = "finish-migrate" // source during the final stop-and-copy
	StateShutdown      = "shutdown"       // guest powered off under -no-shutdown
	StateGuestPanicked = "guest-panicked"
	StateInternalError = "internal-error"
	StateIOError       = "io-error"
	StateSuspended     = "suspended"
	StateWatchdog      = "watchdog"
	StateDebug         = "debug"
	StateRestoreVM     = "restore-vm"
	StateSaveVM        = "save-vm"
	StateColo          = "colo"
)

// StatusInfo is query-status's reply.
type StatusInfo struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus reports the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var s StatusInfo
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// VersionInfo is query-version's reply.
type VersionInfo struct {
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	Package string `json:"package"`
}

// QueryVersion asks QEMU for its version (the greeting has it too: Version).
func (c *Client) QueryVersion(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.Execute(ctx, "query-version", nil, &v)
	return v, err
}

// Stop pauses the vCPUs (QEMU emits STOP).
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Cont resumes the vCPUs, also out of -S prelaunch (QEMU emits RESUME).
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// SystemPowerdown presses the ACPI power button; the guest may ignore it.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// SystemReset hard-resets the guest.
func (c *Client) SystemReset(ctx context.Context) error {
	return c.Execute(ctx, "system_reset", nil, nil)
}

// Quit makes QEMU exit. QEMU may hang up before its reply reaches us, so
// a closed connection counts as success; wait for the process as well.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// BlockdevAdd adds a block node; args is a QAPI BlockdevOptions object
// ("driver", "node-name", "file", ...).
func (c *Client) BlockdevAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "blockdev-add", args, nil)
}

// BlockdevDel removes a block node that no device uses any more.
func (c *Client) BlockdevDel(ctx context.Context, nodeName string) error {
	return c.Execute(ctx, "blockdev-del", map[string]any{"node-name": nodeName}, nil)
}

// DeviceAdd hotplugs a device; args holds "driver", "id", "bus" and the
// device's own properties, as -device takes them.
func (c *Client) DeviceAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "device_add", args, nil)
}

// DeviceDel asks for a device's removal and waits until the guest has
// released it (DEVICE_DELETED): only then may its id and backing node be
// reused. A guest that ignores the request leaves it waiting until ctx
// ends; a guest that reports failure (DEVICE_UNPLUG_GUEST_ERROR, QEMU 6.2+)
// ends it with an error.
func (c *Client) DeviceDel(ctx context.Context, id string) error {
	path := "/machine/peripheral/" + id
	w := c.expect([]string{EventDeviceDeleted, "DEVICE_UNPLUG_GUEST_ERROR"}, func(ev Event) bool {
		var d struct {
			Device string `json:"device"`
			Path   string `json:"path"`
		}
		// device is slated for deprecation in favour of path: accept either.
		return ev.Decode(&d) == nil && (d.Device == id || d.Path == path)
	})
	if err := c.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		w.Cancel()
		return err
	}
	ev, err := w.Wait(ctx)
	if err != nil {
		return fmt.Errorf("qmp device_del %s: %w", id, err)
	}
	if ev.Name != EventDeviceDeleted {
		return fmt.Errorf("qmp device_del %s: the guest refused the unplug", id)
	}
	return nil
}

// QueryBlock lists the block backends (devices' drives), as raw JSON.
func (c *Client) QueryBlock(ctx context.Context) (json.RawMessage, error) {
	var r json.RawMessage
	err := c.Execute(ctx, "query-block", nil, &r)
	return r, err
}

// QueryNamedBlockNodes lists block nodes as raw JSON; flat omits each
// node's backing-chain image tree.
func (c *Client) QueryNamedBlockNodes(ctx context.Context, flat bool) (json.RawMessage, error) {
	var args any
	if flat {
		args = map[string]any{"flat": true}
	}
	var r json.RawMessage
	err := c.Execute(ctx, "query-named-block-nodes", args, &r)
	return r, err
}

// HumanMonitorCommand runs an HMP command line and returns its output.
// For debugging and for gaps in QMP only: HMP output is not stable.
func (c *Client) HumanMonitorCommand(ctx context.Context, commandLine string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]any{"command-line": commandLine}, &out)
	return out, err
}

// BalloonSet asks the balloon driver to bring guest RAM to bytes.
// Without a virtio-balloon device QEMU answers DeviceNotActive.
func (c *Client) BalloonSet(ctx context.Context, bytes int64) error {
	return c.Execute(ctx, "balloon", map[string]any{"value": bytes}, nil)
}

// QueryBalloon returns the guest's current RAM size in bytes ("actual").
func (c *Client) QueryBalloon(ctx context.Context) (int64, error) {
	var r struct {
		Actual int64 `json:"actual"`
	}
	err := c.Execute(ctx, "query-balloon", nil, &r)
	return r.Actual, err
}

// ChardevAdd creates a character device; backend is a QAPI ChardevBackend,
// e.g. {"type":"socket","data":{"addr":{...},"server":true,"wait":false}}.
// It returns the pty path for "pty" backends, "" otherwise.
func (c *Client) ChardevAdd(ctx context.Context, id string, backend map[string]any) (string, error) {
	var r struct {
		Pty string `json:"pty"`
	}
	err := c.Execute(ctx, "chardev-add", map[string]any{"id": id, "backend": backend}, &r)
	return r.Pty, err
}

// ChardevRemove removes a character device no frontend uses.
func (c *Client) ChardevRemove(ctx context.Context, id string) error {
	return c.Execute(ctx, "chardev-remove", map[string]any{"id": id}, nil)
}

// CPUInfoFast is one element of query-cpus-fast's reply.
type CPUInfoFast struct {
	CPUIndex int             `json:"cpu-index"`
	QOMPath  string          `json:"qom-path"`
	ThreadID int             `json:"thread-id"` // host thread: for pinning and accounting
	Target   string          `json:"target"`
	Props    json.RawMessage `json:"props,omitempty"`
}

// QueryCPUsFast lists the vCPUs without interrupting them.
func (c *Client) QueryCPUsFast(ctx context.Context) ([]CPUInfoFast, error) {
	var r []CPUInfoFast
	err := c.Execute(ctx, "query-cpus-fast", nil, &r)
	return r, err
}
