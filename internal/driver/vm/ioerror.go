package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/qmp"
)

// A disk write that fails (above all ENOSPC: a thin disk in a full pool) makes QEMU stop the guest
// with run state io-error (werror=enospc, its default, stops on ENOSPC) and mark the device's
// io-status. Nothing is held open between calls, so the BLOCK_IO_ERROR event is not seen; the run
// state and query-block's io-status say the same, whenever asked.

var _ driver.StatusReasoner = (*Driver)(nil)

// blockIOStatus is the part of query-block's answer that tells a device's I/O health.
type blockIOStatus struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	IOStatus string `json:"io-status"` // ok, failed, nospace; absent when errors do not stop the guest
}

// ioErrorReason says which disks failed, for a guest paused with run state io-error.
func ioErrorReason(ctx context.Context, c *qmp.Client) (string, error) {
	raw, err := c.QueryBlock(ctx)
	if err != nil {
		return "", err
	}
	var devs []blockIOStatus
	if err := json.Unmarshal(raw, &devs); err != nil {
		return "", fmt.Errorf("query-block: %w", err)
	}
	var bad []string
	for _, d := range devs {
		if d.IOStatus == "" || d.IOStatus == "ok" {
			continue
		}
		name := d.Device
		if name == "" {
			name = deviceID(d.QDev)
		}
		what := "a write or read failed"
		if d.IOStatus == "nospace" {
			what = "no space left on its storage pool"
		}
		bad = append(bad, fmt.Sprintf("disk %s: %s", strings.TrimPrefix(name, "drive-"), what))
	}
	if len(bad) == 0 {
		return "paused by QEMU on a disk I/O error", nil
	}
	return "paused by QEMU on a disk I/O error (" + strings.Join(bad, "; ") + ")", nil
}

// deviceID is the -device id in a qdev path: virtio-blk-pci's backend is reported as
// /machine/peripheral/ID/virtio-backend, a device with an id of its own as the id alone.
func deviceID(qdev string) string {
	if rest, ok := strings.CutPrefix(qdev, "/machine/peripheral/"); ok {
		id, _, _ := strings.Cut(rest, "/")
		return id
	}
	return qdev
}

// StatusReason tells why a VM is paused when QEMU paused it on a disk I/O error ("" otherwise).
func (d *Driver) StatusReason(ctx context.Context, h *driver.Handle) (string, error) {
	var reason string
	err := d.qmpRunning(ctx, h, func(c *qmp.Client) error {
		st, err := c.QueryStatus(ctx)
		if err != nil || st.Status != qmp.StateIOError {
			return err
		}
		reason, err = ioErrorReason(ctx, c)
		return err
	})
	if errors.Is(err, driver.ErrNotRunning) {
		return "", nil
	}
	return reason, err
}

// resumeHoldsFor is how long a guest resumed after an I/O error must keep running for the resume
// to count: QEMU retries the failed requests at once, and pauses again if they fail again.
const resumeHoldsFor = time.Second

// resumeAfterIOError resumes a guest QEMU paused on a disk I/O error, and fails, saying why, if the
// retried I/O pauses it again (the pool is still full), instead of reporting a resume that did
// not hold.
func resumeAfterIOError(ctx context.Context, c *qmp.Client) error {
	reason, err := ioErrorReason(ctx, c)
	if err != nil {
		return err
	}
	if err := c.Cont(ctx); err != nil {
		return err
	}
	deadline := time.Now().Add(resumeHoldsFor)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		st, err := c.QueryStatus(ctx)
		if err != nil {
			return err
		}
		if st.Status == qmp.StateIOError {
			return errdefs.Conflict("the guest was %s, and the retried I/O failed again at once: it stays paused; free space on its pool, then resume", reason)
		}
	}
	return nil
}
