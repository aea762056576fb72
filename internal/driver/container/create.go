package container

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/driver"
	"tandem/internal/driver/container/rootfs"
	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

// Create makes the bundle: a private copy of the image rootfs owned by the container's id range,
// config.json and state.json (written last: its presence means the create finished). A failure
// leaves nothing behind; a create cut short by a crash is cleaned up by Delete.
func (d *Driver) Create(ctx context.Context, spec *driver.Spec) (_ *driver.Handle, err error) {
	if err := d.available(); err != nil {
		return nil, err
	}
	if err := checkID(spec.ID); err != nil {
		return nil, err
	}
	if st, err := d.load(spec.ID); err != nil {
		return nil, err
	} else if st != nil {
		return nil, errdefs.Exists("container %s exists", spec.ID)
	}
	if _, err := resources(spec.Config, false, ""); err != nil {
		return nil, err
	}
	if spec.Root != nil {
		if err := checkRoot(spec.Root); err != nil {
			return nil, err
		}
	}
	src, info, err := d.opts.Images.Rootfs(ctx, spec.Image)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec.Image, err)
	}
	p := d.paths(spec.ID)
	// Leftovers of an interrupted create (no state.json) are ours to replace.
	if err := d.removeFiles(p); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if rerr := d.removeFiles(p); rerr != nil {
				slog.Error("clean up after a failed create", "container", spec.ID, "err", rerr)
			}
			if rerr := d.ids.Release(spec.ID); rerr != nil {
				slog.Error("release the ids after a failed create", "container", spec.ID, "err", rerr)
			}
		}
	}()
	if err := os.Mkdir(p.bundle, 0o700); err != nil {
		return nil, err
	}
	st := &instState{ID: spec.ID, ShutdownSignal: info.ShutdownSignal, Image: spec.Image,
		Fingerprint: info.Fingerprint, CreatedAt: time.Now().UTC()}
	if spec.Config["security.privileged"] != "true" {
		r, err := d.ids.Allocate(spec.ID)
		if err != nil {
			return nil, err
		}
		st.IDs = rootfs.IDMap{Base: r.Base, Size: r.Size}
	}
	if err := lockBundle(p, int(st.IDs.ToHost(0))); err != nil {
		return nil, err
	}
	if spec.Root != nil {
		progress.Report(ctx, 10, "preparing the root disk")
		if err := d.readyRoot(ctx, &driver.Handle{ID: spec.ID, Spec: *spec}, st, true); err != nil {
			return nil, fmt.Errorf("prepare root disk: %w", err)
		}
	} else {
		progress.Report(ctx, 10, "copying root filesystem")
		if err := rootfs.Copy(ctx, src, p.rootfs, st.IDs); err != nil {
			return nil, fmt.Errorf("copy root filesystem: %w", err)
		}
	}
	root := int(st.IDs.ToHost(0))
	if err := writeHostname(d.RootfsPath(&driver.Handle{ID: spec.ID}), spec.Name, root, root); err != nil {
		return nil, fmt.Errorf("write /etc/hostname: %w", err)
	}
	if err := releaseRoot(p); err != nil {
		return nil, err
	}
	progress.Report(ctx, 90, "writing container config")
	if err := d.writeConfig(spec, st, ""); err != nil {
		return nil, err
	}
	h := &driver.Handle{ID: spec.ID, Driver: Name, Version: 1, Spec: *spec}
	if err := d.save(h, st); err != nil {
		return nil, err
	}
	return h, nil
}

// Delete removes everything the driver made for a container: runc state and cgroup, shim, network
// namespace, run directory, bundle and rootfs, id range. A running container is refused (the
// control plane stops it first); an unknown one is fine.
func (d *Driver) Delete(ctx context.Context, h *driver.Handle) error {
	if err := checkID(h.ID); err != nil {
		return err
	}
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	if status == driver.StatusRunning || status == driver.StatusPaused {
		return errdefs.Conflict("container %s is %s: stop it first", h.ID, status)
	}
	// Mid-migration the rootfs may be the destination's too: AbortDump, or CommitDump and Release.
	if st, err := d.load(h.ID); err == nil && st != nil && st.Migration != "" {
		return errdefs.Conflict("container %s is being migrated (%s): abort it, or commit and release it", h.ID, st.Migration)
	}
	p := d.paths(h.ID)
	if err := d.cleanupRuntime(ctx, h.ID); err != nil {
		return err
	}
	if err := d.removeFiles(p); err != nil {
		return err
	}
	if err := d.ids.Release(h.ID); err != nil {
		return err
	}
	h.DriverState = nil
	return nil
}

// interceptSysinfo says whether the shim answers the container's sysinfo calls
// (security.syscalls.intercept.sysinfo, default true).
func interceptSysinfo(config map[string]string) bool {
	return config["security.syscalls.intercept.sysinfo"] != "false"
}

// hostNofile is the hard open-files limit of the daemon, which runc and the container inherit.
func hostNofile() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Max
}

// hostCapBnd is the daemon's capability bounding set (0 if unreadable).
func hostCapBnd() uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return n
		}
	}
	return 0
}

// removeFiles removes the run dir and the bundle; a root disk mounted in it is unmounted first
// (or the removal is refused), never emptied.
func (d *Driver) removeFiles(p paths) error {
	if err := os.RemoveAll(p.run); err != nil {
		return err
	}
	if err := releaseRoot(p); err != nil {
		return err
	}
	return os.RemoveAll(p.bundle)
}

// writeConfig (re)writes config.json for the spec's current config.
func (d *Driver) writeConfig(spec *driver.Spec, st *instState, lxcfs string) error {
	return d.writeConfigWith(spec, st, lxcfs, nil)
}

// writeConfigWith is writeConfig with the restore hook netnsHook (nil: none).
func (d *Driver) writeConfigWith(spec *driver.Spec, st *instState, lxcfs string, netnsHook []string) error {
	res, err := resources(spec.Config, false, "")
	if err != nil {
		return err
	}
	p := d.paths(spec.ID)
	in := specInput{
		Hostname:    spec.Name,
		Rootfs:      runcRoot(p),
		CRIUConfig:  p.criuConf,
		NetnsHook:   netnsHook,
		IDs:         st.IDs,
		CgroupsPath: d.cgroupsPath(spec.ID),
		Env:         envFromConfig(spec.Config),
		Resources:   res,
		LXCFS:       lxcfs,
		Nesting:     spec.Config["security.nesting"] == "true",
		HostNofile:  hostNofile(),
		HostCapBnd:  hostCapBnd(),
	}
	if interceptSysinfo(spec.Config) {
		in.SeccompListener = p.seccompSock
	}
	s := buildSpec(in)
	return writeJSON(p.config, s)
}
