package container

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/shim"
)

// The restore network hook. CRIU (told by runc that the network namespace is "empty") creates the
// restored container's network namespace itself, inside the container's new user namespace, and
// restores TCP sockets into it right away. Between the two it sends runc a "setup-namespaces"
// notification, on which runc runs the bundle's createRuntime hooks with the restored init's pid.
// The driver's hook is the shim binary (shim.NetnsHookArg), which passes the pid to the daemon
// over <run>/hook.sock and waits; the daemon then, in order:
//
//  1. bind-mounts /proc/<pid>/ns/net at <run>/netns (NetnsPath works from here on) and, when
//     TCP connections are restored, drops the namespace's traffic until the restore is complete
//     (netlock.go);
//  2. brings lo up;
//  3. calls Options.PrepareNetwork(ctx, h, <run>/netns), as on a boot: the network layer plugs the
//     instance's veths in (same interface names and MACs as on the source);
//  4. puts back the interfaces' addresses and routes recorded at the dump (netconf.go);
//
// and answers "ok": CRIU goes on and restores the sockets, which now find their addresses and
// routes. An error answer fails the restore before any process runs.

// netHook serves one restore's hook.
type netHook struct {
	ln      net.Listener
	done    chan struct{}
	mu      sync.Mutex
	ran     bool
	err     error
	handoff func() error // lifts the restore lock (see handOverRestoreLock)
}

// listenNetHook starts serving the hook of h's restore; conf is what the namespace must hold.
func (d *Driver) listenNetHook(ctx context.Context, h *driver.Handle, p paths, conf *netConf, lock bool) (*netHook, error) {
	os.Remove(p.netnsHook)
	ln, err := net.Listen("unix", p.netnsHook)
	if err != nil {
		return nil, fmt.Errorf("restore hook socket: %w", err)
	}
	nh := &netHook{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(nh.done)
		conn, err := ln.Accept()
		if err != nil {
			return // closed: the restore ended without running the hook
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(2 * time.Minute))
		line, err := bufio.NewReader(conn).ReadString('\n')
		pid, perr := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "pid "))
		if err == nil && (perr != nil || pid <= 0) {
			err = fmt.Errorf("bad hook request %q", line)
		}
		if err == nil {
			err = d.prepareRestoredNetns(ctx, h, p, pid, conf, lock)
		}
		nh.mu.Lock()
		nh.ran, nh.err = true, err
		nh.mu.Unlock()
		if err != nil {
			fmt.Fprintf(conn, "error %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
			return
		}
		if lock {
			nh.mu.Lock()
			nh.handoff = handOverRestoreLock(context.WithoutCancel(ctx), p.netns)
			nh.mu.Unlock()
		}
		fmt.Fprintf(conn, "ok\n")
	}()
	return nh, nil
}

// close stops serving and reports whether the hook ran and how it ended.
func (nh *netHook) close(p paths) (bool, error) {
	nh.ln.Close()
	<-nh.done
	os.Remove(p.netnsHook)
	nh.mu.Lock()
	defer nh.mu.Unlock()
	return nh.ran, nh.err
}

// unlock lifts the restore lock, if the hook set one.
func (nh *netHook) unlock() error {
	nh.mu.Lock()
	defer nh.mu.Unlock()
	if nh.handoff == nil {
		return nil
	}
	err := nh.handoff()
	nh.handoff = nil
	return err
}

// prepareRestoredNetns readies the network namespace of a container being restored (steps 1-4
// above).
func (d *Driver) prepareRestoredNetns(ctx context.Context, h *driver.Handle, p paths, pid int, conf *netConf, lock bool) error {
	if err := bindNetns(pid, p.netns); err != nil {
		return err
	}
	if lock {
		if err := lockRestoreNetns(ctx, p.netns); err != nil {
			return fmt.Errorf("lock the network for the restore: %w", err)
		}
	}
	if err := loopbackUp(p.netns); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if d.opts.PrepareNetwork != nil {
		if err := d.opts.PrepareNetwork(ctx, h, p.netns); err != nil {
			return fmt.Errorf("prepare network: %w", err)
		}
	}
	if err := applyNet(ctx, p.netns, conf); err != nil {
		return fmt.Errorf("restore the network configuration: %w", err)
	}
	return nil
}

// hookArgv is the argv runc runs as the restore hook. /proc/self/exe would be runc itself
// there, so the daemon's binary is named through its own pid.
func (d *Driver) hookArgv(p paths) []string {
	bin := d.opts.ShimBinary
	if bin == "/proc/self/exe" {
		bin = "/proc/" + strconv.Itoa(os.Getpid()) + "/exe"
	}
	return []string{bin, ShimArg, shim.NetnsHookArg, p.netnsHook}
}

var errNoHook = errors.New("runc did not run the restore hook")
