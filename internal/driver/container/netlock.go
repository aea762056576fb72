package container

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Network locks around CRIU, beyond CRIU's own.
//
// On restore, the addresses come back (restore hook) a little before CRIU locks the new
// namespace for the socket restore: a client's retransmission landing in between would meet no
// socket and get a reset. So the hook drops all traffic of the namespace from its first step
// (restoreLockTable) and the driver lifts that once the restore is complete.
//
// On a lazy dump that fails (AbortDump, or the daemon's death resetting the page server
// connection), CRIU 4.1.1 resumes the tasks but skips its network unlock (cr_dump_finish unlocks
// before the lazy transfer, and only on an earlier failure): the namespace keeps CRIU's
// drop-everything table and the TCP sockets stay in repair mode, where a write fails with
// EINVAL and the application drops the connection. So once a lazy dump's images are written
// (tasks frozen, the namespace still locked by CRIU's table), the driver takes the sockets out
// of repair mode itself (repairOffNetns); whatever then happens to the tasks is dropped by the
// table: on commit they die, on abort they run on and unlockNetnsAfterCRIU deletes the table.

// restoreLockTable is the driver's own lock, in the inet family (IPv4 and IPv6). CRIU's restore
// traffic carries SOCCR_MARK (0xC114) and passes, as in CRIU's own lock.
const restoreLockTable = "tandem-restore"

const restoreLockRules = `table inet ` + restoreLockTable + ` {
	chain input { type filter hook input priority -400; policy drop; iif "lo" accept; meta mark 0xc114 accept; }
	chain output { type filter hook output priority -400; policy drop; oif "lo" accept; meta mark 0xc114 accept; }
}
`

// nftIn runs nft(8) with script on stdin in the network namespace at netns.
func nftIn(ctx context.Context, netns, script string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + netns, "nft"}, args...)...)
	cmd.Env = shimEnv()
	cmd.Stdin = strings.NewReader(script)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// lockRestoreNetns drops the traffic of a namespace being restored (but lo's and CRIU's).
func lockRestoreNetns(ctx context.Context, netns string) error {
	_, err := nftIn(ctx, netns, restoreLockRules, "-f", "-")
	return err
}

// unlockRestoreNetns lifts lockRestoreNetns.
func unlockRestoreNetns(ctx context.Context, netns string) error {
	_, err := nftIn(ctx, netns, "", "delete", "table", "inet", restoreLockTable)
	return err
}

// handOverRestoreLock lifts the driver's restore lock as soon as CRIU's own lock is in place
// (CRIU locks right after the hook and unlocks just before the tasks resume), so that the
// restored sockets' first packets are not held back by ours: a client's retransmission timer
// backs off exponentially, and every millisecond past a retry costs the next one. The returned
// func stops watching and makes sure the driver's lock is gone.
func handOverRestoreLock(ctx context.Context, netns string) func() error {
	stop, done := make(chan struct{}), make(chan bool, 1)
	go func() {
		for {
			if out, err := nftIn(ctx, netns, "", "list", "tables"); err == nil && strings.Contains(out, "table inet CRIU") {
				done <- unlockRestoreNetns(ctx, netns) == nil
				return
			}
			select {
			case <-stop:
				done <- false
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return func() error {
		close(stop)
		if <-done {
			return nil
		}
		return unlockRestoreNetns(ctx, netns)
	}
}

// repairOffNetns takes the TCP sockets of the processes in the namespace at netns out of repair
// mode.
func repairOffNetns(netns string) error {
	var ns unix.Stat_t
	if err := unix.Stat(netns, &ns); err != nil {
		return err
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	var errs []string
	for _, nsPath := range procs {
		var st unix.Stat_t
		if unix.Stat(nsPath, &st) != nil || st.Ino != ns.Ino || st.Dev != ns.Dev {
			continue
		}
		pid, _ := strconv.Atoi(strings.Split(nsPath, "/")[2])
		if err := repairOff(pid); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("TCP repair mode off: %s", strings.Join(errs, "; "))
	}
	return nil
}

// unlockNetnsAfterCRIU makes sure no socket in the namespace at netns is left in repair mode
// (turning it off sends a window probe: the peer retransmits at once) and deletes CRIU's lock
// tables: after a lazy dump's abort, and after a dump whose criu was killed.
func unlockNetnsAfterCRIU(ctx context.Context, netns string) error {
	var errs []string
	if err := repairOffNetns(netns); err != nil {
		errs = append(errs, err.Error())
	}
	out, err := nftIn(ctx, netns, "", "list", "tables")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "table" && strings.HasPrefix(f[2], "CRIU") {
			if _, err := nftIn(ctx, netns, "", "delete", "table", f[1], f[2]); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("unlock the network after CRIU: %s", strings.Join(errs, "; "))
	}
	return nil
}

// repairOff turns TCP repair mode off on pid's connected TCP sockets, through copies of its
// descriptors (pidfd_getfd).
func repairOff(pid int) error {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil // gone
	}
	defer unix.Close(pidfd)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		n, err := strconv.Atoi(e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue
		}
		domain, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if (domain == unix.AF_INET || domain == unix.AF_INET6) && typ == unix.SOCK_STREAM {
			if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && info.State != unix.BPF_TCP_LISTEN && info.State != unix.BPF_TCP_CLOSE {
				if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
					unix.Close(fd)
					return fmt.Errorf("pid %d fd %d: TCP_REPAIR off: %w", pid, n, err)
				}
			}
		}
		unix.Close(fd)
	}
	return nil
}
