package main

import (
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

	"tandem/api"
	"tandem/bench/internal/benchkit"
	"tandem/client"
	"tandem/internal/daemon"
	"tandem/internal/driver/container"
	"tandem/internal/image"
)

// tandem is a private tandemd on a fresh state dir, with the CLI built next to it.
type tandem struct {
	bin, dir  string // where tandem and tandemd are; the daemon's state dir
	cmd       *exec.Cmd
	exited    chan struct{}
	c         *client.Client
	names     []string // instances asked for, deleted at the end
	leftovers int      // runc processes found alive next to the shims
}

// startTandem starts tandemd with containers only (no networks) and waits until it answers.
// On error it may still return a daemon, for close to stop.
func startTandem(ctx context.Context, bin, dir string) (*tandem, error) {
	logf, err := os.Create(dir + ".log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(bin, "tandemd"), "--dir", dir, "--network=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: Ctrl-C is the benchmark's to handle, and the daemon must outlive it
	// long enough to delete the containers.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	t := &tandem{bin: bin, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() { cmd.Wait(); close(t.exited) }()
	if t.c, err = client.New(dir); err != nil {
		return t, err
	}
	return t, benchkit.WaitDaemon(ctx, t.c, t.exited, dir+".log")
}

// cli runs the tandem CLI against this daemon.
func (t *tandem) cli(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(t.bin, "tandem"), append([]string{"--dir", t.dir}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tandem %v: %v: %s", args, err, out)
	}
	return nil
}

// busyboxRootfs builds the busybox image through the CLI, exports it and unpacks its rootfs for
// the plain runc containers, so that both kinds boot the same files.
func (t *tandem) busyboxRootfs(ctx context.Context, work string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := t.cli(ctx, "image", "build", "busybox"); err != nil {
		return "", err
	}
	file := filepath.Join(work, "busybox.img")
	if err := t.cli(ctx, "image", "export", "busybox", file); err != nil {
		return "", err
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	rootfs := filepath.Join(work, "rootfs")
	return rootfs, image.Unpack(ctx, f, rootfs, image.UnpackOptions{})
}

// launch launches one container through the API and times it: until the launch operation
// succeeds (runc started init), then until `tandem exec NAME -- true` first succeeds.
func (t *tandem) launch(ctx context.Context, name string) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var s sample
	t.names = append(t.names, name)
	start := time.Now()
	op, err := t.c.CreateInstance(ctx, api.InstancesPost{Name: name, Type: api.TypeContainer, Image: "busybox", Start: true})
	if err == nil {
		_, err = t.c.WaitOperation(ctx, op.ID, nil)
	}
	if client.IsStatus(err, 503) {
		return s, fmt.Errorf("%w: tandem cannot run containers here: %v", benchkit.ErrSkip, err)
	}
	if err != nil {
		return s, fmt.Errorf("tandem launch %s: %w", name, err)
	}
	s.launch = time.Since(start)
	s.ready, err = untilOK(ctx, start, func(ctx context.Context) error { return t.cli(ctx, "exec", name, "--", "true") })
	return s, err
}

// memory fills in what each container costs the host: its shim (found by its argv; its shim.json
// names the container), any runc process the shim left running, and the container's cgroup.
func (t *tandem) memory(procs []proc, out []sample) error {
	// A container's bundle is <dir>/containers/<id>; its config.json has the name as hostname.
	bundles, _ := filepath.Glob(filepath.Join(t.dir, "containers", "*", "config.json"))
	byID := map[string]*specs.Spec{}
	for _, b := range bundles {
		var spec specs.Spec
		data, err := os.ReadFile(b)
		if err == nil {
			err = json.Unmarshal(data, &spec)
		}
		if err != nil || spec.Linux == nil {
			return fmt.Errorf("reading %s: %v", b, err)
		}
		byID[filepath.Base(filepath.Dir(b))] = &spec
	}
	daemonExe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", t.cmd.Process.Pid))
	runc, _ := exec.LookPath("runc")
	runc, _ = filepath.EvalSymlinks(runc)
	shimOf := map[int]string{} // shim pid -> container name
	perName := map[string]*sample{}
	for i, name := range t.names {
		perName[name] = &out[i]
	}
	for _, p := range procs {
		if p.exe != daemonExe || len(p.argv) < 4 || p.argv[1] != container.ShimArg {
			continue
		}
		var cfg struct {
			ID string `json:"id"`
		}
		data, err := os.ReadFile(p.argv[3])
		if err == nil {
			err = json.Unmarshal(data, &cfg)
		}
		if spec := byID[cfg.ID]; err == nil && spec != nil && perName[spec.Hostname] != nil {
			shimOf[p.pid] = spec.Hostname
			perName[spec.Hostname].procs += rss(p.pid)
			perName[spec.Hostname].pss += pss(p.pid)
		}
	}
	for _, p := range procs { // runc leftovers: a runc process whose parent is a shim
		if name, ok := shimOf[p.ppid]; ok && p.exe == runc {
			perName[name].procs += rss(p.pid)
			perName[name].pss += pss(p.pid)
			t.leftovers++
		}
	}
	if len(shimOf) != len(t.names) {
		return fmt.Errorf("found %d tandem shims for %d containers", len(shimOf), len(t.names))
	}
	for _, spec := range byID {
		s := perName[spec.Hostname]
		if s == nil {
			continue
		}
		n, err := cgroupMemory(spec.Linux.CgroupsPath)
		if err != nil {
			return fmt.Errorf("cgroup of %s: %w", spec.Hostname, err)
		}
		s.cgroup = n
	}
	return nil
}

// daemonRSS is tandemd's own resident set, a cost shared by all containers.
func (t *tandem) daemonRSS() int64 { return rss(t.cmd.Process.Pid) }

// lxcfsRSS is the resident set of the host's lxcfs (which renders /proc files for every
// container of every tandem daemon here), 0 if none runs.
func lxcfsRSS(procs []proc) int64 {
	var n int64
	for _, p := range procs {
		if filepath.Base(p.exe) == "lxcfs" {
			n += rss(p.pid)
		}
	}
	return n
}

// close deletes the containers through the API, stops the daemon with SIGTERM (instances would
// outlive it) and removes its run dir under /run/tandem. It reports whether all of that worked;
// t may be nil.
func (t *tandem) close(ctx context.Context) bool {
	if t == nil {
		return true
	}
	ok := true
	for _, name := range t.names {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		op, err := t.c.DeleteInstance(cctx, name, true)
		if err == nil {
			_, err = t.c.WaitOperation(cctx, op.ID, nil)
		}
		cancel()
		if err != nil && !client.IsStatus(err, 404) {
			fmt.Fprintf(os.Stderr, "bench/container: delete %s: %v\n", name, err)
			ok = false
		}
	}
	t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-t.exited:
	case <-time.After(20 * time.Second):
		fmt.Fprintln(os.Stderr, "bench/container: tandemd ignored SIGTERM for 20s; killing it")
		t.cmd.Process.Kill()
		<-t.exited
	}
	if ok {
		os.RemoveAll(daemon.RunDir(t.dir))
	}
	// lxcfs is a host service that every tandem daemon here shares: one the driver had to start
	// is left running, as tandem itself leaves it.
	if pid, err := os.ReadFile(filepath.Join(t.dir, "containers", "lxcfs.pid")); err == nil {
		fmt.Printf("note: this run's tandemd started lxcfs (pid %s), a shared host service; it is left running\n",
			strings.TrimSpace(string(pid)))
	}
	return ok
}
