package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// Lazy (post-copy) migration. The source's `runc checkpoint --lazy-pages` writes every image but
// memory, then CRIU serves the frozen tasks' memory from a page server until a destination has
// pulled it all, and only then kills them; if the transfer fails, CRIU resumes them instead.
// CRIU takes the first connection to its page server, treats end-of-stream as success and binds
// the port on every address; so the driver has CRIU listen on 127.0.0.1 only (its config file),
// connects to it at once and lets the destination in through a proxy of its own (pageProxy). The
// proxy holds the destination's final "close" until CommitDump, turns AbortDump into a protocol
// error (CRIU resumes the tasks), and dies with a reset (SO_LINGER 0) rather than an
// end-of-stream if the daemon dies: a migration nobody commits never kills the source.

// lazyDump is a source's running lazy dump.
type lazyDump struct {
	cmd   *exec.Cmd
	proxy *pageProxy
	done  chan struct{}
	err   error // runc checkpoint's end, once done is closed
}

func (d *Driver) dumpLazy(ctx context.Context, h *driver.Handle, st *instState, o DumpOpts) (DumpStats, error) {
	if reason := d.lazyDumpRefusal(); reason != "" {
		return DumpStats{}, errdefs.Unavailable("lazy dump of %s: %s", h.ID, reason)
	}
	p := d.paths(h.ID)
	port, err := freePort()
	if err != nil {
		return DumpStats{}, err
	}
	if !configHasCRIUConf(p.config, p.criuConf) {
		return DumpStats{}, errdefs.Unavailable("container %s was started before lazy migration was supported: restart it first", h.ID)
	}
	conf := "address 127.0.0.1\n" // CRIU's own page server: only the proxy reaches it
	if base, err := os.ReadFile("/etc/criu/runc.conf"); err == nil {
		conf = string(base) + "\n" + conf // what runc would have used otherwise
	}
	if err := fsutil.WriteFileAtomic(p.criuConf, []byte(conf), 0o600); err != nil {
		return DumpStats{}, err
	}
	st.Migration = migLazy
	if err := d.save(h, st); err != nil {
		return DumpStats{}, err
	}
	stats := DumpStats{Started: time.Now(), Lazy: true}
	ld := &lazyDump{}
	err = d.dumpImagesWith(ctx, h, st, runc.CheckpointOpts{ImagePath: o.Dir, TCPEstablished: o.TCPEstablished, LazyPages: true,
		PageServer: "127.0.0.1:" + strconv.Itoa(port), StatusFD: 3}, func(ctx context.Context, o runc.CheckpointOpts) error {
		// A pipe and a done channel per try: a retry after a hang starts afresh.
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		defer r.Close()
		done := make(chan struct{})
		var stderr bytes.Buffer
		argv := d.runc.Argv(d.runc.CheckpointArgs(h.ID, o)...)
		ld.cmd, ld.done = exec.Command(argv[0], argv[1:]...), done
		ld.cmd.ExtraFiles = []*os.File{w}
		ld.cmd.Stderr = &stderr
		ld.cmd.Env = append(shimEnv(), runc.CheckpointEnv(o)...)
		ld.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		err = ld.cmd.Start()
		w.Close()
		if err != nil {
			return err
		}
		cmd := ld.cmd
		go func() {
			err := cmd.Wait()
			if err != nil {
				err = runc.Error("checkpoint", stderr.Bytes(), err)
			}
			ld.err = err
			close(done)
		}()
		// A NUL byte when the page server listens; end-of-file if runc gives up.
		got := make(chan error, 1)
		go func() {
			b := make([]byte, 1)
			_, err := r.Read(b)
			got <- err
		}()
		select {
		case err := <-got:
			if err == nil {
				return nil
			}
			<-done
			return ld.err
		case <-ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // runc and criu: the guard thaws
			<-done
			return ctx.Err()
		}
	})
	stats.Dumped, stats.Size = time.Since(stats.Started), dirSize(o.Dir)
	if err == nil && o.TCPEstablished && isNetns(p.netns) {
		// Frozen and locked now; see netlock.go for why the sockets leave repair mode here.
		if err = repairOffNetns(p.netns); err != nil {
			abortPageServer("127.0.0.1:" + strconv.Itoa(port))
			<-ld.done
		}
	}
	if err == nil {
		ld.proxy, err = startPageProxy(o.PageServerAddr, "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			ld.proxy = nil
			abortPageServer("127.0.0.1:" + strconv.Itoa(port))
			<-ld.done
		}
	}
	if err != nil {
		return stats, d.lazyFailed(ctx, h, st, err)
	}
	d.lazyDumps.Store(h.ID, ld)
	return stats, nil
}

// lazyFailed brings the source back after a lazy dump that did not get as far as serving.
func (d *Driver) lazyFailed(ctx context.Context, h *driver.Handle, st *instState, err error) error {
	ctx = context.WithoutCancel(ctx)
	if status, _ := d.State(ctx, h); status == driver.StatusPaused {
		d.runc.Resume(ctx, h.ID) // CRIU killed mid-freeze leaves the freezer frozen
	}
	if p := d.paths(h.ID); isNetns(p.netns) {
		// A CRIU that failed after locking leaves the lock (netlock.go); none is a no-op.
		if uerr := unlockNetnsAfterCRIU(ctx, p.netns); uerr != nil {
			slog.Error("resume after a failed lazy dump", "container", h.ID, "err", uerr)
		}
	}
	st.Migration = ""
	return errors.Join(err, d.save(h, st))
}

func (d *Driver) commitLazy(ctx context.Context, h *driver.Handle, st *instState) error {
	v, ok := d.lazyDumps.Load(h.ID)
	if !ok {
		return d.recoverLazy(ctx, h, st)
	}
	ld := v.(*lazyDump)
	if err := ld.proxy.commit(ctx); err != nil {
		return fmt.Errorf("commit %s: %w (the source stays frozen: AbortDump resumes it if the destination is dead)", h.ID, err)
	}
	select {
	case <-ld.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	d.lazyDumps.Delete(h.ID)
	if ld.err != nil {
		// CRIU failed at the very end and resumed the tasks: they run here again.
		st.Migration = ""
		return errors.Join(fmt.Errorf("commit %s: the page transfer failed and the container runs on the source: %w", h.ID, ld.err), d.save(h, st))
	}
	if err := unmountNetns(d.paths(h.ID).netns); err != nil {
		slog.Warn("commit: unmount the network namespace", "container", h.ID, "err", err)
	}
	if err := d.cleanupRuntime(ctx, h.ID); err != nil {
		slog.Warn("commit: clean up the runtime", "container", h.ID, "err", err)
	}
	st.Migration = migMoved
	return d.save(h, st)
}

// WaitLazyPages returns once the destination of a lazy dump has pulled every page (the source's
// tasks stay frozen until CommitDump), or fails when the destination went away first or ctx
// ends. A caller that commits the move only after it returned never leaves the destination
// running with memory still on the source.
func (d *Driver) WaitLazyPages(ctx context.Context, h *driver.Handle) error {
	v, ok := d.lazyDumps.Load(h.ID)
	if !ok {
		return errdefs.Conflict("container %s has no lazy dump in flight here", h.ID)
	}
	ld := v.(*lazyDump)
	err := ld.proxy.wait(ctx)
	if err == nil {
		return nil
	}
	select {
	case <-ld.done: // CRIU gave up on its own
		return fmt.Errorf("wait for the pages of %s: %w (CRIU ended: %v)", h.ID, err, ld.err)
	default:
		return fmt.Errorf("wait for the pages of %s: %w", h.ID, err)
	}
}

func (d *Driver) abortLazy(ctx context.Context, h *driver.Handle, st *instState) error {
	v, ok := d.lazyDumps.Load(h.ID)
	if !ok {
		return d.recoverLazy(ctx, h, st)
	}
	ld := v.(*lazyDump)
	ld.proxy.abort()
	select {
	case <-ld.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	d.lazyDumps.Delete(h.ID)
	return d.recoverLazy(ctx, h, st)
}

// recoverLazy settles a lazy dump whose process is gone (aborted, or lost with a daemon
// restart): running tasks mean CRIU resumed them; none mean the transfer completed.
func (d *Driver) recoverLazy(ctx context.Context, h *driver.Handle, st *instState) error {
	// A runc checkpoint still at work (a daemon restarted just now) decides first: until it
	// ends, the tasks may yet be killed (transfer complete) or resumed (transfer failed).
	for deadline := time.Now().Add(30 * time.Second); d.checkpointRunning(h.ID) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	status, err := d.State(ctx, h)
	if err != nil {
		return err
	}
	if status == driver.StatusRunning || status == driver.StatusPaused {
		if p := d.paths(h.ID); isNetns(p.netns) {
			if err := unlockNetnsAfterCRIU(ctx, p.netns); err != nil {
				slog.Error("resume after a lazy dump", "container", h.ID, "err", err)
			}
			// The destination may have run it for a while, and announced it there.
			announce(h.ID, p.netns)
		}
		st.Migration = ""
		return d.save(h, st)
	}
	st.Migration = migMoved
	if err := d.save(h, st); err != nil {
		return err
	}
	return errdefs.Conflict("container %s: its lazy dump completed, so it runs elsewhere now", h.ID)
}

// lazyPages is a destination's `criu lazy-pages` daemon: it takes the restored tasks'
// userfaultfds and fills their memory from the source's page server.
type lazyPages struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (d *Driver) startLazyPages(ctx context.Context, id string, p paths, dir, addr string) (*lazyPages, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, errdefs.Invalid("page server address %q: %v", addr, err)
	}
	os.RemoveAll(p.criuWork)
	if err := os.Mkdir(p.criuWork, 0o700); err != nil {
		return nil, err
	}
	lp := &lazyPages{log: filepath.Join(p.criuWork, "lazy-pages.log"), done: make(chan struct{})}
	lp.cmd = exec.Command(d.opts.ShimBinary, ShimArg, lazyGuardArg, d.cgroupsPath(id),
		d.criuPath, "lazy-pages", "--page-server", "--address", host, "--port", port,
		"-D", dir, "-W", p.criuWork, "-o", "lazy-pages.log", "-v4")
	lp.cmd.Env = shimEnv()
	lp.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // it outlives a daemon restart
	guardLog, err := os.OpenFile(filepath.Join(p.criuWork, "lazy-guard.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer guardLog.Close() // the child has its own copy
	lp.cmd.Stdout, lp.cmd.Stderr = guardLog, guardLog
	if err := lp.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start criu lazy-pages: %w", err)
	}
	go func() {
		lp.err = lp.cmd.Wait()
		close(lp.done)
	}()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(p.lazySock); err == nil {
			return lp, nil
		}
		select {
		case <-lp.done:
			return nil, fmt.Errorf("criu lazy-pages exited: %v%s", lp.err, lp.errors())
		case <-ctx.Done():
			lp.kill()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			lp.kill()
			return nil, errors.New("criu lazy-pages did not get ready within 10s")
		}
	}
}

// kill ends the guard and its lazy-pages daemon (one process group: their own session).
func (lp *lazyPages) kill() {
	syscall.Kill(-lp.cmd.Process.Pid, syscall.SIGKILL)
	<-lp.done
}

// lazyGuardArg runs `criu lazy-pages` under a guard, a re-exec of the daemon binary in the lazy
// daemon's session. A lazy-pages daemon that fails (its page server gone: a cut link, a source or
// a tandemd that died) leaves the restored tasks running, and every page they had not received yet
// then reads as zeros (the kernel drops a released userfaultfd's ranges). The guard kills the
// container's tasks when that happens, whether or not tandemd is still there to do it.
const lazyGuardArg = "lazy-guard"

// lazyGuardMain runs argv[1:] and, if it fails, kills whatever runs in the cgroup argv[0]; it
// exits with the command's status.
func lazyGuardMain(argv []string) int {
	if len(argv) < 2 {
		fmt.Fprintln(os.Stderr, "lazy-guard: want CGROUP-PATH COMMAND [ARG...]")
		return 2
	}
	cmd := exec.Command(argv[1], argv[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "lazy-guard: %s: %v: killing the container's tasks (their memory is incomplete)\n", argv[1], err)
	if serr := sweepCgroup(argv[0]); serr != nil {
		fmt.Fprintf(os.Stderr, "lazy-guard: %v\n", serr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return ee.ExitCode()
	}
	return 1
}

func (lp *lazyPages) errors() string { return criuErrors(lp.log) }

// result yields the daemon's end once.
func (lp *lazyPages) result() <-chan error {
	ch := make(chan error, 1)
	go func() {
		<-lp.done
		if lp.err != nil {
			ch <- fmt.Errorf("criu lazy-pages: %v%s", lp.err, lp.errors())
		} else {
			ch <- nil
		}
		close(ch)
	}()
	return ch
}

// checkpointRunning reports whether a `runc checkpoint` of container id (this driver's runc
// root) is running.
func (d *Driver) checkpointRunning(id string) bool {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range cmdlines {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if len(args) > 2 && args[len(args)-1] == id && slices.Contains(args, "checkpoint") && slices.Contains(args, d.runc.Root) {
			return true
		}
	}
	return false
}

// configHasCRIUConf reports whether the running container's config names the driver's CRIU
// config file (containers started by older versions do not).
func configHasCRIUConf(config, want string) bool {
	data, err := os.ReadFile(config)
	return err == nil && bytes.Contains(data, []byte(strconv.Quote(want)))
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func execQuiet(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).Run()
}
