package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// plainRunc is the container baseline: busybox init from the same image rootfs under runc alone
// (its own --root, `runc spec` defaults: a network namespace with lo only, no user namespace),
// checkpointed with CRIU and restored on this host, as one would by hand.
type plainRunc struct {
	bin, root, bundle, work string
	id, cgroupParent        string
	version                 string
	settle                  time.Duration
	created                 bool
	moves                   int
}

func newRunc(ctx context.Context, work, rootfs string, settle time.Duration) (*plainRunc, error) {
	bin, err := exec.LookPath("runc")
	if err != nil {
		return nil, err
	}
	r := &plainRunc{bin: bin, root: filepath.Join(work, "runc"), bundle: filepath.Join(work, "bundle"), work: work,
		id: "plain", cgroupParent: fmt.Sprintf("tbm-%d", os.Getpid()), settle: settle}
	r.version = firstLine(ctx, bin, "--version") + ", CRIU " + strings.TrimPrefix(firstLine(ctx, "criu", "--version"), "Version: ")
	if err := os.Mkdir(r.bundle, 0o755); err != nil {
		return nil, err
	}
	if _, err := sh(ctx, bin, "spec", "--bundle", r.bundle); err != nil {
		return nil, err
	}
	config := filepath.Join(r.bundle, "config.json")
	var spec specs.Spec
	data, err := os.ReadFile(config)
	if err == nil {
		err = json.Unmarshal(data, &spec)
	}
	if err != nil || spec.Process == nil || spec.Root == nil || spec.Linux == nil {
		return nil, fmt.Errorf("runc spec wrote an unexpected config.json (%v)", err)
	}
	// CRIU cannot dump a terminal it does not own; the image's console script sleeps without one.
	spec.Process.Terminal = false
	spec.Process.Args = []string{"/sbin/init"}
	spec.Root.Path = rootfs
	spec.Hostname = r.id
	spec.Linux.CgroupsPath = "/" + r.cgroupParent + "/" + r.id
	limit := int64(128 << 20) // as tandem's container
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
	if data, err = json.MarshalIndent(&spec, "", "\t"); err == nil {
		err = os.WriteFile(config, data, 0o644)
	}
	if err != nil {
		return nil, err
	}
	r.created = true
	if err := r.detached(ctx, "run", "--detach", "--bundle", r.bundle, r.id); err != nil {
		return r, err
	}
	return r, r.idle(ctx)
}

func (r *plainRunc) runc(ctx context.Context, args ...string) (string, error) {
	return sh(ctx, append([]string{r.bin, "--root", r.root}, args...)...)
}

// detached runs a runc command that leaves the container running. Without a terminal, init
// inherits runc's stdio: /dev/null here, which CRIU reopens on restore (a file or pipe outside the
// container's mounts it cannot dump as is). runc's errors go to a log file instead.
func (r *plainRunc) detached(ctx context.Context, args ...string) error {
	log := filepath.Join(r.work, "runc.log")
	os.Remove(log)
	cmd := exec.CommandContext(ctx, r.bin, append([]string{"--root", r.root, "--log", log}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(log)
		return fmt.Errorf("runc %s: %v: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// idle waits until the container answers `runc exec`, then for settle.
func (r *plainRunc) idle(ctx context.Context) error {
	err := poll(ctx, time.Minute, func() error { _, err := r.runc(ctx, "exec", r.id, "true"); return err })
	if err != nil {
		return err
	}
	return sleep(ctx, r.settle)
}

// move checkpoints the container (it stops) and restores it detached from the images: the time
// from starting the checkpoint until the restore returns is both its freeze and its total, since
// nothing is transferred. "sent" is the size of the checkpoint images a move would carry.
func (r *plainRunc) move(ctx context.Context) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	r.moves++
	images := filepath.Join(r.work, fmt.Sprintf("checkpoint%d", r.moves))
	defer os.RemoveAll(images + ".work")
	defer os.RemoveAll(images)
	start := time.Now()
	if _, err := r.runc(ctx, "checkpoint", "--image-path", images, "--work-path", images+".work", r.id); err != nil {
		return sample{}, fmt.Errorf("%w\n%s", err, tail(filepath.Join(images+".work", "dump.log")))
	}
	if err := r.detached(ctx, "restore", "--image-path", images, "--work-path", images+".work",
		"--bundle", r.bundle, "--detach", r.id); err != nil {
		return sample{}, fmt.Errorf("%w\n%s", err, tail(filepath.Join(images+".work", "restore.log")))
	}
	s := sample{total: time.Since(start), sent: dirSize(images), mode: "checkpoint+restore"}
	s.pause = s.total
	return s, r.idle(ctx)
}

// tail is the end of a log file (CRIU's says why it failed).
func tail(file string) string {
	b, _ := os.ReadFile(file)
	return string(b[max(0, len(b)-2000):])
}

// dirSize is the bytes in the regular files below dir.
func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// close force-deletes the container and removes its cgroup parent; r may be nil.
func (r *plainRunc) close(ctx context.Context) bool {
	if r == nil || !r.created {
		return true
	}
	ok := true
	if _, err := r.runc(ctx, "delete", "--force", r.id); err != nil && !strings.Contains(err.Error(), "does not exist") {
		fmt.Fprintf(os.Stderr, "bench/migrate: %v\n", err)
		ok = false
	}
	removeCgroup(r.cgroupParent)
	return ok
}

// removeCgroup removes a top-level cgroup if it is empty: from the one tree of v2, or from every
// controller's of v1.
func removeCgroup(name string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	for _, d := range append(dirs, filepath.Join("/sys/fs/cgroup", name)) {
		syscall.Rmdir(d)
	}
}

// firstLine is the first line a command prints, or "" when it fails.
func firstLine(ctx context.Context, args ...string) string {
	out, err := sh(ctx, args...)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	return line
}
