package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// plainRunc is the baseline: runc alone, with its own state root and the `runc spec` defaults,
// booting busybox init detached and without a terminal from one shared rootfs.
type plainRunc struct {
	bin, root, work string
	version         string
	parent          string // cgroup parent of the containers
	spec            specs.Spec
	ids             []string // containers asked for, deleted at the end
	leftovers       int      // runc processes found alive for them
}

func newRunc(ctx context.Context, work, rootfs string) (*plainRunc, error) {
	bin, err := exec.LookPath("runc")
	if err != nil {
		return nil, err
	}
	r := &plainRunc{bin: bin, root: filepath.Join(work, "runc"), work: work,
		parent: fmt.Sprintf("tbench-%d", os.Getpid())}
	if v, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		r.version, _, _ = strings.Cut(string(v), "\n")
	}
	dir := filepath.Join(work, "spec")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.CommandContext(ctx, bin, "spec", "--bundle", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("runc spec: %v: %s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &r.spec); err != nil || r.spec.Process == nil || r.spec.Root == nil || r.spec.Linux == nil {
		return nil, fmt.Errorf("runc spec wrote an unexpected config.json (%v)", err)
	}
	r.spec.Process.Terminal = false
	r.spec.Process.Args = []string{"/sbin/init"}
	r.spec.Root.Path = rootfs
	return r, nil
}

// runc runs one runc command against the baseline's state root.
func (r *plainRunc) runc(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, r.bin, append([]string{"--root", r.root}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // busybox init reboots on SIGINT
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("runc %s: %v: %s", args[0], err, bytes.TrimSpace(out))
	}
	return nil
}

// launch runs one container with `runc run --detach` and times it: until runc returns (init
// runs), then until `runc exec ID true` first succeeds.
func (r *plainRunc) launch(ctx context.Context, id string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var s sample
	bundle := filepath.Join(r.work, "b-"+id)
	if err := os.Mkdir(bundle, 0o755); err != nil {
		return s, err
	}
	r.spec.Hostname = id
	r.spec.Linux.CgroupsPath = r.cgroup(id)
	data, err := json.MarshalIndent(&r.spec, "", "\t")
	if err == nil {
		err = os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644)
	}
	if err != nil {
		return s, err
	}
	// Without a terminal init inherits runc's stdio: a file, not a pipe that would never close.
	stdio, err := os.Create(filepath.Join(bundle, "stdio.log"))
	if err != nil {
		return s, err
	}
	defer stdio.Close()
	cmd := exec.CommandContext(ctx, r.bin, "--root", r.root, "run", "--detach", "--bundle", bundle,
		"--pid-file", filepath.Join(bundle, "init.pid"), id)
	cmd.Stdout, cmd.Stderr = stdio, stdio
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r.ids = append(r.ids, id)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(stdio.Name())
		return s, fmt.Errorf("runc run %s: %v: %s", id, err, bytes.TrimSpace(out))
	}
	s.launch = time.Since(start)
	s.ready, err = untilOK(ctx, start, func(ctx context.Context) error { return r.runc(ctx, "exec", id, "true") })
	return s, err
}

func (r *plainRunc) cgroup(id string) string { return "/" + r.parent + "/" + id }

// memory fills in each container's cgroup usage and any runc process left for it (runc exits
// after starting a detached container, so there should be none).
func (r *plainRunc) memory(procs []proc, out []sample) error {
	runc, _ := filepath.EvalSymlinks(r.bin)
	for _, p := range procs {
		if p.exe != runc || !strings.Contains(strings.Join(p.argv, " "), r.root) {
			continue
		}
		r.leftovers++
		for i, id := range r.ids {
			if p.argv[len(p.argv)-1] == id {
				out[i].procs += rss(p.pid)
				out[i].pss += pss(p.pid)
			}
		}
	}
	for i, id := range r.ids {
		n, err := cgroupMemory(r.cgroup(id))
		if err != nil {
			return fmt.Errorf("cgroup of runc container %s: %w", id, err)
		}
		out[i].cgroup = n
	}
	return nil
}

// close force-deletes the containers (runc removes their cgroups) and the cgroup parent. r may
// be nil.
func (r *plainRunc) close(ctx context.Context) bool {
	if r == nil {
		return true
	}
	ok := true
	for _, id := range r.ids {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := r.runc(cctx, "delete", "--force", id)
		cancel()
		if err != nil && !strings.Contains(err.Error(), "does not exist") {
			fmt.Fprintf(os.Stderr, "bench/container: %v\n", err)
			ok = false
		}
	}
	removeCgroup("/" + r.parent)
	return ok
}
