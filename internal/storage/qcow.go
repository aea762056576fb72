package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"tandem/internal/errdefs"
	"tandem/internal/hostexec"
	"tandem/internal/progress"
	"tandem/internal/qemuimg"
)

// qemuImgCreate makes a qcow2 disk; with backing (relative to the disk's directory) an overlay
// whose size is the base's when size is 0.
func qemuImgCreate(ctx context.Context, file string, size uint64, backing string) error {
	args := []string{"create", "-q", "-f", "qcow2"}
	if backing != "" {
		args = append(args, "-F", "qcow2", "-b", backing)
	}
	args = append(args, file)
	if size > 0 {
		args = append(args, strconv.FormatUint(size, 10))
	}
	_, err := run(ctx, "qemu-img", args...)
	return err
}

// qemuImgResize grows a qcow2 disk. QEMU's image locks make it fail while a VM has the disk open.
func qemuImgResize(ctx context.Context, file string, size uint64) error {
	_, err := run(ctx, "qemu-img", "resize", "-q", "-f", "qcow2", file, strconv.FormatUint(size, 10))
	if err != nil && strings.Contains(err.Error(), "lock") {
		return errdefs.Conflict("disk %s is open in a running VM: grow it through the VM (QMP block_resize): %v", file, err)
	}
	return err
}

type imgInfo struct {
	VirtualSize uint64 `json:"virtual-size"`
	Format      string `json:"format"`
	Backing     string `json:"backing-filename"`
}

// qemuImgInfo reads a disk's header; format is never probed (a raw image could pose as qcow2).
func qemuImgInfo(ctx context.Context, file, format string) (*imgInfo, error) {
	out, err := run(ctx, "qemu-img", "info", "-U", "--output=json", "-f", format, file)
	if err != nil {
		return nil, err
	}
	var info imgInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", file, err)
	}
	return &info, nil
}

// qemuImgConvert writes src (format srcFormat) as a standalone qcow2 dst, reporting progress.
func qemuImgConvert(ctx context.Context, src, srcFormat, dst, msg string) error {
	path, err := hostexec.Look("qemu-img")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, path, "convert", "-p", "-f", srcFormat, "-O", "qcow2", src, dst)
	stderr, err := qemuimg.Run(cmd, func(p int) { progress.Report(ctx, p, msg) })
	if err != nil {
		if ctx.Err() != nil {
			return errors.Join(errdefs.ErrCancelled, ctx.Err())
		}
		return &hostexec.ExitError{Cmd: "qemu-img convert " + src, Err: err, Output: stderr}
	}
	return nil
}
