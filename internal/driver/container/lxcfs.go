package container

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/internal/logctx"

	"golang.org/x/sys/unix"
)

// lxcfs renders /proc/meminfo, cpuinfo, uptime, stat, ... from the reading process's cgroup, so
// free, top and uptime inside a container show its own limits. The driver bind-mounts its files
// over /proc in every container it starts while lxcfs runs. Hosts should run lxcfs as a service
// (Debian's package ships one); where it is installed but not running (no systemd), the driver
// starts it, in its own session, so it outlives the daemon. Containers started while lxcfs was
// down keep the host's /proc files until restarted; if lxcfs dies, their overlays fail (ENOTCONN)
// until they restart: the lxcfs limitation every user of it has.

// lxcfsDir returns where lxcfs is mounted, starting it if needed, or "" if it cannot be had.
func (d *Driver) lxcfsDir(ctx context.Context) string {
	if d.opts.NoLXCFS {
		return ""
	}
	d.lxcfsMu.Lock()
	defer d.lxcfsMu.Unlock()
	dir := d.opts.LXCFS
	if lxcfsAlive(dir) {
		return dir
	}
	bin, err := exec.LookPath("lxcfs")
	if err != nil {
		return ""
	}
	if lxcfsMounted(dir) { // a dead lxcfs leaves a mount that answers ENOTCONN
		unix.Unmount(dir, unix.MNT_DETACH)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		logctx.From(ctx).Warn("lxcfs: cannot make its mount point", "dir", dir, "err", err)
		return ""
	}
	logf, err := os.OpenFile(filepath.Join(d.opts.Dir, "lxcfs.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return ""
	}
	defer logf.Close()
	// -l: loadavg per container; --enable-cfs: cpuinfo/stat show as many CPUs as the quota allows;
	// --enable-pidfd: track init by pidfd, not a recyclable pid.
	cmd := exec.Command(bin, "-f", "-l", "--enable-cfs", "--enable-pidfd", "-p", filepath.Join(d.opts.Dir, "lxcfs.pid"), dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		logctx.From(ctx).Warn("lxcfs: cannot start", "err", err)
		return ""
	}
	go cmd.Wait()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if lxcfsAlive(dir) {
			logctx.From(ctx).Info("started lxcfs", "dir", dir, "pid", cmd.Process.Pid)
			return dir
		}
		if ctx.Err() != nil {
			break
		}
	}
	logctx.From(ctx).Warn("lxcfs did not come up; containers see the host's /proc files", "dir", dir)
	return ""
}

// lxcfsAlive reports whether a working lxcfs is mounted at dir.
func lxcfsAlive(dir string) bool {
	if !lxcfsMounted(dir) {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, "proc", "meminfo"))
	return err == nil
}

func lxcfsMounted(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[4] != dir {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "fuse.lxcfs" {
				return true
			}
		}
	}
	return false
}
