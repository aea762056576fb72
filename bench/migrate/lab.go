package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tandem/api"
	"tandem/bench/internal/benchkit"
	"tandem/client"
	"tandem/internal/daemon"
	"tandem/internal/image"
)

// lab is two hosts on this machine as `tandem move` sees real ones (test/system's newLab): a
// network namespace per host with its own tandemd and state dir, a management link between the
// daemons (HTTPS with mutual TLS carries every byte of a move), and an L2 segment for instances (a
// root-namespace bridge both hosts' "lab" networks are bridged to, like a top-of-rack switch).
// No address of it is in the root namespace, so its subnets cannot clash with another lab's.
type lab struct {
	work, bin string
	prefix    string // of this run's link and namespace names
	hosts     []*host
	links     []string // root-namespace links this run made
}

// host is one tandemd in its own network namespace.
type host struct {
	name, ns, dir, addr string // remote name, namespace, state dir, management address
	bin                 string
	cmd                 *exec.Cmd
	exited              chan struct{}
	c                   *client.Client
}

// sh runs a command and returns its stdout, or an error with its stderr.
func sh(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C is the benchmark's to handle
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(errOut.Bytes()))
	}
	return out.String(), nil
}

func newLab(ctx context.Context, work, bin string) (*lab, error) {
	id := os.Getpid() % 100000
	n3 := id % 250 // third octet of the management and lab subnets
	l := &lab{work: work, bin: bin, prefix: fmt.Sprintf("tbm%d", id)}
	labBr, mgBr := l.prefix+"L", l.prefix+"M"
	for _, br := range []string{labBr, mgBr} {
		l.links = append(l.links, br)
		if err := runAll(ctx, [][]string{{"ip", "link", "add", br, "type", "bridge"}, {"ip", "link", "set", br, "up"}}); err != nil {
			return l, err
		}
	}
	for i := 0; i < 2; i++ {
		h, err := l.startHost(ctx, i, fmt.Sprintf("198.18.%d.%d", n3, i+1), mgBr)
		if err != nil {
			return l, err
		}
		if _, err := h.cli(ctx, "network", "create", "lab", "--subnet", fmt.Sprintf("10.124.%d.0/24", n3), "--nat=false"); err != nil {
			return l, err
		}
		var nw api.Network
		out, err := h.cli(ctx, "network", "info", "lab", "--format", "json")
		if err == nil {
			err = json.Unmarshal([]byte(out), &nw)
		}
		if err != nil {
			return l, fmt.Errorf("%s: network info lab: %v", h.name, err)
		}
		lk := fmt.Sprintf("%sl%d", l.prefix, i)
		if err := l.veth(ctx, lk, h.ns, labBr); err != nil {
			return l, err
		}
		if _, err := sh(ctx, "ip", "-n", h.ns, "link", "set", lk, "master", nw.Bridge, "up"); err != nil {
			return l, err
		}
	}
	for i, a := range l.hosts {
		for j, b := range l.hosts {
			if i == j {
				continue
			}
			token, err := b.cli(ctx, "trust", "add", a.name)
			if err == nil {
				_, err = a.cli(ctx, "remote", "add", b.name, "https://"+b.addr+":8443", "--token", strings.TrimSpace(token))
			}
			if err != nil {
				return l, err
			}
		}
	}
	return l, nil
}

// runAll runs commands in order, stopping at the first failure.
func runAll(ctx context.Context, cmds [][]string) error {
	for _, c := range cmds {
		if _, err := sh(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// veth makes a veth pair: name goes into namespace ns, its peer name+"p" joins bridge br here.
func (l *lab) veth(ctx context.Context, name, ns, br string) error {
	l.links = append(l.links, name+"p")
	return runAll(ctx, [][]string{
		{"ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"},
		{"ip", "link", "set", name, "netns", ns},
		{"ip", "link", "set", name + "p", "master", br, "up"},
	})
}

// startHost makes host i's namespace and management link, and starts its tandemd listening there.
func (l *lab) startHost(ctx context.Context, i int, addr, mgBr string) (*host, error) {
	h := &host{name: fmt.Sprintf("host-%c", 'a'+i), ns: fmt.Sprintf("%s-%c", l.prefix, 'a'+i),
		dir: filepath.Join(l.work, string(rune('a'+i))), addr: addr, bin: l.bin}
	l.hosts = append(l.hosts, h)
	if err := runAll(ctx, [][]string{{"ip", "netns", "add", h.ns}, {"ip", "-n", h.ns, "link", "set", "lo", "up"}}); err != nil {
		h.ns = "" // not ours to delete
		return h, err
	}
	mg := fmt.Sprintf("%sm%d", l.prefix, i)
	if err := l.veth(ctx, mg, h.ns, mgBr); err != nil {
		return h, err
	}
	if err := runAll(ctx, [][]string{{"ip", "-n", h.ns, "addr", "add", addr + "/24", "dev", mg}, {"ip", "-n", h.ns, "link", "set", mg, "up"}}); err != nil {
		return h, err
	}
	logf, err := os.Create(h.dir + ".log")
	if err != nil {
		return h, err
	}
	defer logf.Close()
	// nsenter, not `ip netns exec`: that one remounts /sys, which hides the cgroup mounts. Only
	// tandem0's NAT and DHCP would be unused here: instances get a NIC on "lab" alone.
	h.cmd = exec.Command("nsenter", "--net=/run/netns/"+h.ns, filepath.Join(l.bin, "tandemd"), "--dir", h.dir,
		"--accel", "tcg", "--listen", addr+":8443", "--default-network=false")
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	// Its own process group: Ctrl-C is the benchmark's to handle, and the daemon must outlive it
	// long enough to delete the instances.
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		h.cmd = nil
		return h, err
	}
	h.exited = make(chan struct{})
	go func() { h.cmd.Wait(); close(h.exited) }()
	if h.c, err = client.New(h.dir); err != nil {
		return h, err
	}
	if err := benchkit.WaitDaemon(ctx, h.c, h.exited, h.dir+".log"); err != nil {
		return h, fmt.Errorf("%s: %w", h.name, err)
	}
	return h, nil
}

// cli runs the tandem CLI against this host's daemon and returns its stdout.
func (h *host) cli(ctx context.Context, args ...string) (string, error) {
	return sh(ctx, append([]string{filepath.Join(h.bin, "tandem"), "--dir", h.dir}, args...)...)
}

// busybox builds the busybox image on host-a and imports the same file on host-b: the same
// fingerprint there, so that no measured move carries the image (the first one would send it).
// It returns the image's rootfs, unpacked for the plain runc baseline.
func (l *lab) busybox(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	file := filepath.Join(l.work, "busybox.img")
	a, b := l.hosts[0], l.hosts[1]
	if _, err := a.cli(ctx, "image", "build", "busybox"); err != nil {
		return "", err
	}
	if _, err := a.cli(ctx, "image", "export", "busybox", file); err != nil {
		return "", err
	}
	if _, err := b.cli(ctx, "image", "import", file, "--alias", "busybox"); err != nil {
		return "", err
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	rootfs := filepath.Join(l.work, "rootfs")
	return rootfs, image.Unpack(ctx, f, rootfs, image.UnpackOptions{})
}

// sharedPool makes, on both hosts, a storage pool of the shared driver on one directory (on one
// machine, every host sees it) and returns its name, or "" when this build cannot launch an
// instance's root on a pool (`tandem launch` has no --storage). The names and flags used here
// are the only ones to change if the pool interface differs.
func (l *lab) sharedPool(ctx context.Context) (string, error) {
	help, err := l.hosts[0].cli(ctx, "launch", "--help")
	if err != nil || !strings.Contains(help, "--storage") {
		return "", err
	}
	dir := filepath.Join(l.work, "shared")
	if err := os.Mkdir(dir, 0o711); err != nil {
		return "", err
	}
	for _, h := range l.hosts {
		if _, err := h.cli(ctx, "storage", "pool", "create", "benchshared", "shared", "--source", dir); err != nil {
			return "", err
		}
	}
	return "benchshared", nil
}

// close deletes every instance on both hosts, stops the daemons, ends what they left in their
// namespaces (dnsmasq, QEMU), and removes the namespaces, links and the daemons' run dirs. It
// reports whether the deletes worked; l may be nil.
func (l *lab) close(ctx context.Context) bool {
	if l == nil {
		return true
	}
	ok := true
	for _, h := range l.hosts {
		ok = h.deleteAll(ctx) && ok
	}
	for _, h := range l.hosts {
		h.stop()
		if h.ns != "" {
			if out, _ := exec.Command("ip", "netns", "pids", h.ns).Output(); len(out) > 0 {
				for _, f := range strings.Fields(string(out)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			exec.Command("ip", "netns", "del", h.ns).Run()
		}
		if ok {
			os.RemoveAll(daemon.RunDir(h.dir))
			// The daemon's parent of its containers' cgroups (internal/daemon's cgroupParent), which
			// it leaves behind empty.
			removeCgroup("tandem-" + filepath.Base(daemon.RunDir(h.dir)))
		}
		// lxcfs is a host service every tandem daemon shares: one a daemon had to start is left
		// running, as tandem itself leaves it.
		if pid, err := os.ReadFile(filepath.Join(h.dir, "containers", "lxcfs.pid")); err == nil {
			fmt.Printf("note: %s started lxcfs (pid %s), a shared host service; it is left running\n",
				h.name, strings.TrimSpace(string(pid)))
		}
	}
	for _, link := range l.links {
		exec.Command("ip", "link", "del", link).Run() // a veth went with its namespace already
	}
	return ok
}

// deleteAll force-deletes every instance the host has.
func (h *host) deleteAll(ctx context.Context) bool {
	if h.c == nil || h.cmd == nil {
		return true
	}
	insts, err := h.c.GetInstances(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/migrate: %s: listing instances: %v\n", h.name, err)
		return false
	}
	ok := true
	for _, in := range insts {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		op, err := h.c.DeleteInstance(cctx, in.Name, true)
		if err == nil {
			_, err = h.c.WaitOperation(cctx, op.ID, nil)
		}
		cancel()
		if err != nil && !client.IsStatus(err, 404) {
			fmt.Fprintf(os.Stderr, "bench/migrate: %s: delete %s: %v\n", h.name, in.Name, err)
			ok = false
		}
	}
	return ok
}

// stop ends the daemon with SIGTERM (its instances were deleted), SIGKILL after 20s.
func (h *host) stop() {
	if h.cmd == nil {
		return
	}
	h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(20 * time.Second):
		fmt.Fprintf(os.Stderr, "bench/migrate: %s: tandemd ignored SIGTERM for 20s; killing it\n", h.name)
		h.cmd.Process.Kill()
		<-h.exited
	}
}
