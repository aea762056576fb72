package container

import (
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// capabilities a system container's root keeps. Inside a user namespace each one only reaches what
// the namespace owns (its mounts, network, processes), so a whole OS runs as it expects (mount,
// chown, ping, net config, reboot of the pid namespace). Dropped: what acts on the shared kernel or
// host-wide state even where the kernel would allow it: modules (SYS_MODULE), raw I/O (SYS_RAWIO),
// the clock (SYS_TIME, WAKE_ALARM), MAC policy (MAC_*), the kernel log (SYSLOG), audit config,
// BPF, PERFMON, suspend blocking and CHECKPOINT_RESTORE.
var capabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_SETFCAP",
}

// capNumbers maps the names in capabilities to their bit numbers.
var capNumbers = map[string]uint{
	"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
	"CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
	"CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
	"CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19,
	"CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
	"CAP_SYS_RESOURCE": 24, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
	"CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}

// containerCaps is the capability set of init. Without a user namespace the container cannot
// have what the daemon lacks (runc fails with "unable to apply caps"), so a privileged one gets
// capabilities cut to the daemon's bounding set (hostBounding; 0 if unknown). In a user namespace
// the set is the namespace's own and is always whole.
func containerCaps(privileged bool, hostBounding uint64) []string {
	if !privileged || hostBounding == 0 {
		return capabilities
	}
	var out []string
	for _, c := range capabilities {
		if hostBounding&(1<<capNumbers[c]) != 0 {
			out = append(out, c)
		}
	}
	return out
}

// deniedSyscalls fail with EPERM whatever the capabilities: each reaches kernel state no
// namespace isolates, or is a large, often-exploited attack surface a system container rarely needs.
// reboot is allowed: in a pid namespace it ends that namespace (busybox and systemd power off so).
// mount is allowed: the user namespace limits it to filesystems marked safe for it.
var deniedSyscalls = []string{
	// replace or extend the running kernel
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"create_module", "query_module", "get_kernel_syms",
	// kernel programs and introspection
	"bpf", "perf_event_open", "lookup_dcookie",
	// the kernel keyring is not namespaced
	"add_key", "keyctl", "request_key",
	// file handles open any inode of a filesystem ("shocker")
	"open_by_handle_at",
	// host-wide state: accounting, swap, kernel log, the clock, I/O ports
	"acct", "swapon", "swapoff", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "stime",
	"iopl", "ioperm",
	// attack surface: io_uring and userfaultfd (a favourite exploitation aid)
	"io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
	// obsolete
	"uselib", "nfsservctl", "_sysctl", "vm86", "vm86old",
}

// seccompProfile allows everything but deniedSyscalls, on the native and compat architectures.
// With a listener, sysinfo goes to the shim listening there, which answers with the container's
// memory and uptime (busybox free and uptime read sysinfo, which lxcfs cannot change).
func seccompProfile(listener string) *specs.LinuxSeccomp {
	eperm := uint(1)
	s := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: seccompArches(runtime.GOARCH),
		Syscalls: []specs.LinuxSyscall{{
			Names:    deniedSyscalls,
			Action:   specs.ActErrno,
			ErrnoRet: &eperm,
		}},
	}
	if listener != "" {
		s.ListenerPath = listener
		s.Syscalls = append(s.Syscalls, specs.LinuxSyscall{Names: []string{"sysinfo"}, Action: specs.ActNotify})
	}
	return s
}

// seccompArches lists the syscall ABIs a process can use on goarch: a deny list must cover the
// compat ABIs too, or a 32-bit binary walks around it.
func seccompArches(goarch string) []specs.Arch {
	switch goarch {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil
}

// maskedPaths are hidden (an empty file or directory over them), as runc's default spec does:
// host kernel memory, keys, timers and firmware.
var maskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
}

// readonlyPaths are kernel knobs the container may read but not write, as in runc's default spec.
var readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}

// rlimits: a generous open-files ceiling (databases and systemd raise the soft limit themselves),
// capped by the host's hard limit (hostNofile; 0 if unknown): inside a user namespace a hard limit
// can only be lowered.
func rlimits(hostNofile uint64) []specs.POSIXRlimit {
	hard := uint64(524288)
	if hostNofile > 0 && hostNofile < hard {
		hard = hostNofile
	}
	return []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Soft: min(1024, hard), Hard: hard}}
}
