package container

import (
	"path"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"tandem/internal/driver/container/rootfs"
)

// ociVersion is the runtime-spec version runc 1.1 implements; the Go types are newer but the
// fields used here are all 1.0.
const ociVersion = "1.0.2"

// specInput is everything buildSpec needs. It holds nothing that touches the host, so the config
// is data built by a pure function and tested as data.
type specInput struct {
	Hostname    string
	Rootfs      string       // absolute path of the container's own root filesystem
	IDs         rootfs.IDMap // identity for a privileged container (no user namespace)
	CgroupsPath string
	Env         []string // KEY=VALUE for init, added to the defaults
	Resources   *specs.LinuxResources
	LXCFS       string // where lxcfs is mounted, "" if it is not in use
	Nesting     bool   // security.nesting: leave /proc unmasked so nested containers can mount it
	HostNofile  uint64 // the host's hard RLIMIT_NOFILE, which caps the container's
	HostCapBnd  uint64 // the daemon's capability bounding set, which caps a privileged container's
	// SeccompListener is the shim's socket that answers sysinfo ("" = the kernel answers).
	SeccompListener string
	// CRIUConfig is the CRIU configuration file runc hands CRIU (annotation org.criu.config);
	// its options override runc's (the lazy page server's address, see migrate.go).
	CRIUConfig string
	// NetnsHook, on a restore, is the argv of the createRuntime hook that lets the daemon fill
	// the restored network namespace before CRIU restores the sockets (see nethook.go).
	NetnsHook []string
}

// netnsHookTimeout is runc's budget for the restore hook, in seconds.
const netnsHookTimeout = 120

// lxcfsFiles are the /proc (and /sys) files lxcfs renders from the reader's cgroup, so that free,
// top and nproc inside see the container's limits and uptime. runc only allows these /proc
// destinations.
var lxcfsFiles = []string{
	"/proc/cpuinfo", "/proc/diskstats", "/proc/loadavg", "/proc/meminfo", "/proc/stat",
	"/proc/swaps", "/proc/uptime", "/sys/devices/system/cpu/online",
}

// buildSpec returns the OCI config of a system container: /sbin/init as PID 1 on a console pty;
// its own pid, mount, ipc, uts, cgroup and network namespaces; a user namespace mapping root to
// in.IDs unless privileged; runc's default masked and read-only paths; a minimal /dev (runc adds
// null, zero, full, random, urandom, tty, ptmx); a deny-list seccomp profile; no new privileges.
//
// The network namespace is created by runc (no path), because it must belong to the container's
// user namespace: a user namespace's root can only configure, and sysfs can only be mounted for,
// a network namespace that namespace owns; and CRIU cannot restore a user-namespaced container
// into a network namespace it did not create. tandem bind-mounts it by path once it exists, and
// fills it on a restore from the NetnsHook (nethook.go).
func buildSpec(in specInput) *specs.Spec {
	caps := containerCaps(in.IDs.Identity(), in.HostCapBnd)
	s := &specs.Spec{
		Version:  ociVersion,
		Hostname: in.Hostname,
		Root:     &specs.Root{Path: in.Rootfs},
		Process: &specs.Process{
			Terminal: true,
			User:     specs.User{UID: 0, GID: 0},
			Args:     []string{"/sbin/init"},
			Env:      initEnv(in.Env),
			Cwd:      "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
			Rlimits:         rlimits(in.HostNofile),
			NoNewPrivileges: true,
		},
		Mounts: baseMounts(),
		Linux: &specs.Linux{
			CgroupsPath: in.CgroupsPath,
			Resources:   in.Resources,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.CgroupNamespace}, {Type: specs.NetworkNamespace},
			},
			Seccomp: seccompProfile(in.SeccompListener),
		},
	}
	if !in.IDs.Identity() {
		m := []specs.LinuxIDMapping{{ContainerID: 0, HostID: in.IDs.Base, Size: in.IDs.Size}}
		s.Linux.UIDMappings, s.Linux.GIDMappings = m, m
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	}
	if in.CRIUConfig != "" {
		s.Annotations = map[string]string{"org.criu.config": in.CRIUConfig}
	}
	if len(in.NetnsHook) > 0 {
		timeout := netnsHookTimeout
		s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{{Path: in.NetnsHook[0], Args: in.NetnsHook, Timeout: &timeout}}}
	}
	if !in.Nesting {
		s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = maskedPaths, readonlyPaths
	}
	if in.LXCFS != "" {
		for _, f := range lxcfsFiles {
			s.Mounts = append(s.Mounts, specs.Mount{
				Destination: f, Type: "bind", Source: path.Join(in.LXCFS, f), Options: []string{"bind"},
			})
		}
	}
	return s
}

// baseMounts are the kernel filesystems every container gets.
func baseMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
			Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		// Writable, so that systemd as init can make its scopes: the cgroup namespace roots the
		// mount at the container's own cgroup, and delegateCgroup gives the container's root only
		// that subtree's membership files, not the limits tandem set on it.
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime"}},
	}
}

// initEnv is init's environment: a PATH, a terminal type for the console, and container= which
// systemd and others read to know they run in a container; then the user's environment.* keys.
func initEnv(extra []string) []string {
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"TERM=linux",
		"container=tandem",
	}
	return append(env, extra...)
}

// envFromConfig turns environment.KEY=VALUE config keys into sorted KEY=VALUE strings.
func envFromConfig(config map[string]string) []string {
	var env []string
	for k, v := range config {
		if name, ok := strings.CutPrefix(k, "environment."); ok && name != "" {
			env = append(env, name+"="+v)
		}
	}
	sort.Strings(env)
	return env
}
