// Package system holds end-to-end tests: they build the real binaries, start tandemd on a temporary
// dir and drive it through the tandem CLI. Tests that need root, runc, QEMU or CRIU skip with a reason.
package system

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tandem/internal/daemon"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds tandem and tandemd once per test run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "tandem-bin-")
		if buildErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-o", binDir, "./cmd/tandem", "./cmd/tandemd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		// The guest agent is static: it runs inside VMs, which have no libc of the host's.
		agent := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", binDir, "./cmd/tandem-agent")
		agent.Dir = root
		agent.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := agent.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build tandem-agent: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// daemonHarness is one tandemd on its own state dir, optionally in its own network namespace (a
// "host" whose bridges, rules and dnsmasq touch nothing of the machine's).
type daemonHarness struct {
	t     *testing.T
	dir   string
	args  []string
	netns string
	cmd   *exec.Cmd
	log   *bytes.Buffer
}

// startDaemon starts tandemd with extra flags on a fresh short dir (unix socket paths are limited).
func startDaemon(t *testing.T, flags ...string) *daemonHarness {
	t.Helper()
	dir, err := os.MkdirTemp("", "td-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonHarness{t: t, dir: dir, args: flags}
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("tandemd log:\n%s", d.log)
		}
		reapInstances(dir)
		os.RemoveAll(dir)
	})
	d.start()
	return d
}

// startHost starts tandemd in a new network namespace of its own, removed (with whatever still
// runs in it) when the test ends.
func startHost(t *testing.T, flags ...string) *daemonHarness {
	t.Helper()
	return startHostWith(t, nil, flags...)
}

// startHostWith is startHost with setup run in the new namespace's name before tandemd starts (links
// and addresses the daemon must find, like the one it listens on).
func startHostWith(t *testing.T, setup func(ns string), flags ...string) *daemonHarness {
	t.Helper()
	ns := fmt.Sprintf("tdtest-%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	t.Cleanup(func() {
		// After the daemon stopped (registered later, so it runs first): end what it left in the
		// namespace (dnsmasq), then the namespace.
		if out, _ := exec.Command("ip", "netns", "pids", ns).Output(); len(out) > 0 {
			for _, pid := range strings.Fields(string(out)) {
				exec.Command("kill", "-9", pid).Run()
			}
		}
		exec.Command("ip", "netns", "del", ns).Run()
	})
	if setup != nil {
		setup(ns)
	}
	dir, err := os.MkdirTemp("", "td-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonHarness{t: t, dir: dir, args: flags, netns: ns}
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("tandemd log:\n%s", d.log)
		}
		reapInstances(dir)
		os.RemoveAll(dir)
	})
	d.start()
	return d
}

func (d *daemonHarness) start() {
	d.t.Helper()
	d.log = &bytes.Buffer{}
	args := append([]string{"--dir", d.dir, "--log-level", "debug"}, d.args...)
	d.cmd = exec.Command(filepath.Join(binaries(d.t), "tandemd"), args...)
	if d.netns != "" {
		// nsenter, not `ip netns exec`: that one remounts /sys, which hides the cgroup mounts.
		d.cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + d.netns, d.cmd.Path}, args...)...)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, _, err := d.tandem("host", "info"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("tandemd did not come up within 15s:\n%s", d.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the daemon and waits for it to exit.
func (d *daemonHarness) stop(sig syscall.Signal) {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
	d.cmd = nil
}

// tandem runs the CLI against this daemon, bounded in time.
func (d *daemonHarness) tandem(args ...string) (stdout, stderr string, err error) {
	return d.tandemWithin(2*time.Minute, args...)
}

// tandemWithin is tandem with a deadline of its own, for calls longer than two minutes.
func (d *daemonHarness) tandemWithin(limit time.Duration, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(d.t), "tandem"), append([]string{"--dir", d.dir}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// must runs the CLI and fails the test on error.
func (d *daemonHarness) must(args ...string) string {
	d.t.Helper()
	out, errOut, err := d.tandem(args...)
	if err != nil {
		d.t.Fatalf("tandem %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// reapInstances ends what a test daemon left running: a daemon's exit leaves instances running,
// and containers live in namespaces of their own that the host namespace's cleanup does not
// reach. Everything in the daemon's cgroup parent is killed (thawed first) and its cgroups go.
func reapInstances(dir string) {
	parent := "tandem-" + filepath.Base(daemon.RunDir(dir))
	filepath.WalkDir(filepath.Join("/sys/fs/cgroup/freezer", parent), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "freezer.state" {
			os.WriteFile(p, []byte("THAWED"), 0)
		}
		return nil
	})
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent))
	var dirs []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left := 0
		dirs = dirs[:0]
		for _, root := range roots {
			filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return nil
				}
				if d.IsDir() {
					dirs = append(dirs, p)
				} else if d.Name() == "cgroup.procs" {
					data, _ := os.ReadFile(p)
					for _, pid := range strings.Fields(string(data)) {
						if n, err := strconv.Atoi(pid); err == nil {
							syscall.Kill(n, syscall.SIGKILL)
							left++
						}
					}
				}
				return nil
			})
		}
		if left == 0 || time.Now().After(deadline) {
			break
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // children before their parents
		os.Remove(dirs[i])
	}
}
