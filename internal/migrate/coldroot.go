package migrate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/qemuimg"
)

// A stopped instance whose root is copied (a cold move, a copy) is made anew on the destination,
// as a create would make it, and the source then overwrites its root: a container's tree with
// rsync (the "rootfs" endpoint), a VM's disk with qemu-img writing into the destination's
// qemu-nbd (the "nbd" endpoint). Whole disks go: two hosts' base disks are not byte-identical.

// rootReceiver is the destination's side.
type rootReceiver struct {
	tree    string       // a container's root tree
	release func() error // unmounts an image root
	nbd     *exec.Cmd    // a VM's disk export
	nbdErr  *bytes.Buffer
	nbdDone chan error
}

// receiveRoot readies the root of an instance made anew to be filled.
func (e *Engine) receiveRoot(ctx context.Context, c *incoming, info *api.MigrationInfo) error {
	h := c.in.Record.Handle
	r := &rootReceiver{}
	switch c.post.Type {
	case api.TypeContainer:
		cd, err := containerOf(c.in.Driver)
		if err != nil {
			return err
		}
		return receiveTree(ctx, c, cd, info)
	case api.TypeVM:
		vd, err := vmOf(c.in.Driver)
		if err != nil {
			return err
		}
		path, format, err := vd.StoppedDisk(ctx, h)
		if err != nil {
			return err
		}
		if err := r.serveNBD(ctx, path, format, filepath.Join(c.run, "nbd.sock")); err != nil {
			return err
		}
	default:
		return errdefs.Invalid("instance type %q cannot be received", c.post.Type)
	}
	c.root = r
	return nil
}

// receiveTree readies a container's root tree (mounted if it is an image) for the source's rsync.
func receiveTree(ctx context.Context, c *incoming, cd containerMover, info *api.MigrationInfo) error {
	tree, release, err := cd.RootTree(ctx, c.in.Record.Handle)
	if err != nil {
		return err
	}
	c.root, info.Rootfs = &rootReceiver{tree: tree, release: release}, tree
	return nil
}

// serveNBD exports the disk file on a unix socket until the one client (the source's qemu-img,
// through the tunnel) has written it and gone.
func (r *rootReceiver) serveNBD(ctx context.Context, path, format, sock string) error {
	r.nbdErr = &bytes.Buffer{}
	r.nbd = exec.Command("qemu-nbd", "--socket="+sock, "--format="+format, "--cache=writeback",
		"--discard=unmap", "--detect-zeroes=unmap", path)
	r.nbd.Stdout, r.nbd.Stderr = r.nbdErr, r.nbdErr
	if err := r.nbd.Start(); err != nil {
		return errdefs.Unavailable("qemu-nbd: %v (install qemu-utils)", err)
	}
	r.nbdDone = make(chan error, 1)
	go func() { r.nbdDone <- r.nbd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		select {
		case err := <-r.nbdDone:
			r.nbdDone <- err
			return fmt.Errorf("qemu-nbd ended before serving the disk: %v: %s", err, strings.TrimSpace(r.nbdErr.String()))
		case <-ctx.Done():
		default:
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			r.stop()
			return fmt.Errorf("qemu-nbd did not serve the disk within 10s: %s", strings.TrimSpace(r.nbdErr.String()))
		}
	}
}

// finish ends the reception once the source has sent everything: qemu-nbd, which exits when
// its client has gone, has flushed the disk; an image root is unmounted.
func (r *rootReceiver) finish(ctx context.Context) error {
	var err error
	if r.nbd != nil {
		wait, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		select {
		case err = <-r.nbdDone:
			r.nbd = nil
			if err != nil {
				err = fmt.Errorf("qemu-nbd: %v: %s", err, strings.TrimSpace(r.nbdErr.String()))
			}
		case <-wait.Done():
			err = errors.New("the disk's export is still in use: the source did not finish writing it")
		}
	}
	return errors.Join(err, r.stop())
}

// stop ends what is still running or mounted (an abort); it is safe to call again.
func (r *rootReceiver) stop() error {
	if r.nbd != nil {
		r.nbd.Process.Kill()
		<-r.nbdDone
		r.nbd = nil
	}
	if r.release != nil {
		err := r.release()
		r.release = nil
		return err
	}
	return nil
}

// sendRoot is the source's side: it fills the destination's root with this stopped instance's.
func (o *outgoing) sendRoot(ctx context.Context) error {
	h := o.rec.Handle
	switch o.rec.Type {
	case api.TypeContainer:
		cd, err := containerOf(o.drv)
		if err != nil {
			return err
		}
		tree, release, err := cd.RootTree(ctx, h)
		if err != nil {
			return err
		}
		defer release()
		return o.rsync(ctx, StageRootfs, tree, "rootfs", 10, 90, "copying the root filesystem")
	case api.TypeVM:
		vd, err := vmOf(o.drv)
		if err != nil {
			return err
		}
		path, format, err := vd.StoppedDisk(ctx, h)
		if err != nil {
			return err
		}
		return o.sendDisk(ctx, path, format)
	}
	return errdefs.Invalid("instance type %q cannot be sent", o.rec.Type)
}

// sendDisk writes the whole disk, as the guest sees it, into the destination's export; zero
// ranges cross as NBD write-zeroes, not bytes.
func (o *outgoing) sendDisk(ctx context.Context, path, format string) error {
	f, err := o.tunnel(ctx, "nbd")
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		o.sent.Add(f.sent.Load())
	}()
	args := []string{"convert", "-p", "-n", "-f", format, "-O", "raw"}
	if o.bw > 0 {
		args = append(args, "-r", strconv.FormatInt(o.bw, 10))
	}
	args = append(args, path, "nbd+unix:///?socket="+f.path)
	err = o.transfer(func() error {
		stderr, err := qemuimg.Run(exec.CommandContext(ctx, "qemu-img", args...), func(p int) {
			sent := f.sent.Load()
			o.stage(StageRootfs, spanPercent(10, 90, p), sent, 0, fmt.Sprintf("copying the disk: %d%%, %s sent", p, size(sent)))
		})
		if err != nil && ctx.Err() != nil {
			return errors.Join(errdefs.ErrCancelled, context.Cause(ctx))
		}
		if err != nil {
			return fmt.Errorf("%v: %s", err, stderr)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("copying the disk to %s: %w", o.remote, err)
	}
	return nil
}
