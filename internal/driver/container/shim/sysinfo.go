package shim

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sysinfo(2) reports the host's memory, swap, uptime and process count, and no cgroup or lxcfs
// changes that: busybox's free and uptime read it, so without help a container with 64 MiB says
// it has the host's 24 GiB. The container's seccomp profile sends sysinfo to this shim (seccomp
// user notification, runc's listenerPath); the shim answers with the container's figures from
// its cgroup and its init's age, written into the caller's buffer. Anything unexpected falls back
// to the kernel's own answer (SECCOMP_USER_NOTIF_FLAG_CONTINUE).

// seccompNotif and seccompNotifResp are the kernel's struct seccomp_notif and _resp.
type seccompNotif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Nr    int32
	Arch  uint32
	IP    uint64
	Args  [6]uint64
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// sysinfoAgent accepts the notification descriptors runc sends (one for init, one per exec) and
// serves each until its processes are gone.
type sysinfoAgent struct {
	ln      *net.UnixListener
	initPid atomic.Int32
}

func listenSysinfo(path string) (*sysinfoAgent, error) {
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("seccomp agent socket: %w", err)
	}
	os.Chmod(path, 0o600)
	a := &sysinfoAgent{ln: ln}
	go func() {
		for {
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			if fd, err := receiveFd(conn); err == nil {
				go a.serve(fd)
			}
			conn.Close()
		}
	}()
	return a, nil
}

// receiveFd reads one message carrying one descriptor (runc sends the container state as JSON
// with the seccomp fd; the state is not needed here).
func receiveFd(conn *net.UnixConn) (int, error) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return -1, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("no control message")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return -1, fmt.Errorf("no descriptor")
	}
	return fds[0], nil
}

func (a *sysinfoAgent) serve(fd int) {
	defer unix.Close(fd)
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, -1); err != nil {
			if err == unix.EINTR {
				continue
			}
			return
		}
		if pfd[0].Revents&unix.POLLIN == 0 { // POLLHUP: no process uses the filter any more
			return
		}
		var req seccompNotif // must be zeroed for the kernel
		if err := ioctlPtr(fd, unix.SECCOMP_IOCTL_NOTIF_RECV, unsafe.Pointer(&req)); err != nil {
			if err == unix.EINTR || err == unix.ENOENT {
				continue
			}
			return
		}
		resp := a.answer(fd, &req)
		ioctlPtr(fd, unix.SECCOMP_IOCTL_NOTIF_SEND, unsafe.Pointer(&resp)) // ENOENT: caller gone
	}
}

// answer handles one notification: sysinfo of the native ABI is answered, anything else runs as
// if not intercepted.
func (a *sysinfoAgent) answer(fd int, req *seccompNotif) seccompNotifResp {
	cont := seccompNotifResp{ID: req.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
	if req.Nr != unix.SYS_SYSINFO || req.Arch != nativeAudit {
		return cont
	}
	si, err := containerSysinfo(int(req.Pid), int(a.initPid.Load()))
	if err != nil {
		return cont
	}
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", req.Pid), os.O_WRONLY, 0)
	if err != nil {
		return cont
	}
	defer mem.Close()
	// The pid could have been recycled between RECV and open: the id is valid only while the
	// very caller still waits.
	id := req.ID
	if ioctlPtr(fd, unix.SECCOMP_IOCTL_NOTIF_ID_VALID, unsafe.Pointer(&id)) != nil {
		return cont
	}
	b := unsafe.Slice((*byte)(unsafe.Pointer(&si)), unsafe.Sizeof(si))
	if _, err := mem.WriteAt(b, int64(req.Args[0])); err != nil {
		return seccompNotifResp{ID: req.ID, Error: -int32(unix.EFAULT)}
	}
	return seccompNotifResp{ID: req.ID}
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// containerSysinfo is the host's sysinfo with memory, swap, process count and uptime replaced by
// those of pid's cgroup and of the container's init.
func containerSysinfo(pid, initPid int) (unix.Sysinfo_t, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return si, err
	}
	unit := uint64(si.Unit)
	if unit == 0 {
		unit = 1
	}
	m, err := readCgroupMemory(pid)
	if err != nil {
		return si, err
	}
	if m.limit > 0 && m.limit < si.Totalram*unit {
		si.Totalram = m.limit / unit
		si.Freeram = (m.limit - min(m.usage, m.limit)) / unit
		si.Sharedram = m.shmem / unit
		si.Bufferram = 0
		if m.swapLimit >= 0 {
			total := min(uint64(m.swapLimit), si.Totalswap*unit)
			si.Totalswap, si.Freeswap = total/unit, (total-min(m.swapUsage, total))/unit
		}
	}
	if m.tasks > 0 {
		si.Procs = uint16(min(m.tasks, 65535))
	}
	if start, err := startSeconds(initPid); err == nil && start <= si.Uptime {
		si.Uptime -= start
	}
	return si, nil
}

type cgroupMemory struct {
	limit, usage, shmem, swapUsage, tasks uint64
	swapLimit                             int64 // -1: unlimited
}

// readCgroupMemory reads the memory and pids figures of pid's cgroup, v1 or v2.
func readCgroupMemory(pid int) (cgroupMemory, error) {
	m := cgroupMemory{swapLimit: -1}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return m, err
	}
	paths := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 {
			for _, c := range strings.Split(parts[1], ",") {
				paths[c] = parts[2]
			}
		}
	}
	if p, ok := paths["memory"]; ok { // cgroup v1
		dir := filepath.Join("/sys/fs/cgroup/memory", p)
		m.limit = readUint(dir, "memory.limit_in_bytes")
		m.usage = readUint(dir, "memory.usage_in_bytes")
		m.shmem = statField(dir, "memory.stat", "total_shmem")
		if memsw := readUint(dir, "memory.memsw.limit_in_bytes"); memsw > 0 && memsw >= m.limit && memsw < 1<<62 {
			m.swapLimit = int64(memsw - m.limit)
			both := readUint(dir, "memory.memsw.usage_in_bytes")
			m.swapUsage = both - min(m.usage, both)
		}
		m.tasks = readUint(filepath.Join("/sys/fs/cgroup/pids", paths["pids"]), "pids.current")
		return m, nil
	}
	dir := filepath.Join("/sys/fs/cgroup", paths[""]) // cgroup v2
	m.limit = readUint(dir, "memory.max")
	m.usage = readUint(dir, "memory.current")
	m.shmem = statField(dir, "memory.stat", "shmem")
	if s, err := os.ReadFile(filepath.Join(dir, "memory.swap.max")); err == nil && strings.TrimSpace(string(s)) != "max" {
		m.swapLimit = int64(readUint(dir, "memory.swap.max"))
		m.swapUsage = readUint(dir, "memory.swap.current")
	}
	m.tasks = readUint(dir, "pids.current")
	return m, nil
}

// readUint reads a number file; "max" and errors read as 0 (no limit, or unknown).
func readUint(dir, name string) uint64 {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n
}

func statField(dir, name, field string) uint64 {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == field {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	return 0
}

// startSeconds is when pid started, in seconds since boot (/proc/pid/stat field 22, in clock
// ticks of 100 Hz: USER_HZ is 100 on every Linux architecture tandem runs on).
func startSeconds(pid int) (int64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no init pid")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from after its ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("bad stat")
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	return ticks / 100, err
}
