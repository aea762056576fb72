package container

import (
	"encoding/json"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"tandem/internal/driver/container/rootfs"
)

func testInput() specInput {
	res, _ := resources(map[string]string{"limits.memory": "64MiB"}, false, "")
	return specInput{
		Hostname: "c1", Rootfs: "/var/lib/tandem/containers/x/rootfs",
		IDs: rootfs.IDMap{Base: 1065536, Size: 65536}, CgroupsPath: "/tandem/x",
		Env: []string{"FOO=bar"}, Resources: res, LXCFS: "/var/lib/lxcfs", HostNofile: 20000,
	}
}

func TestBuildSpecSystemContainer(t *testing.T) {
	s := buildSpec(testInput())
	if got := s.Process.Args; !slices.Equal(got, []string{"/sbin/init"}) || !s.Process.Terminal {
		t.Errorf("init: %v terminal %v", got, s.Process.Terminal)
	}
	if s.Hostname != "c1" || s.Root.Path != "/var/lib/tandem/containers/x/rootfs" || s.Root.Readonly {
		t.Errorf("hostname %q root %+v", s.Hostname, s.Root)
	}
	var nss []specs.LinuxNamespaceType
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			t.Errorf("namespace %s joins %s: runc must create it in the user namespace", ns.Type, ns.Path)
		}
		nss = append(nss, ns.Type)
	}
	for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace,
		specs.UTSNamespace, specs.CgroupNamespace, specs.NetworkNamespace, specs.UserNamespace} {
		if !slices.Contains(nss, want) {
			t.Errorf("no %s namespace in %v", want, nss)
		}
	}
	want := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1065536, Size: 65536}}
	if !slices.Equal(s.Linux.UIDMappings, want) || !slices.Equal(s.Linux.GIDMappings, want) {
		t.Errorf("mappings %+v %+v", s.Linux.UIDMappings, s.Linux.GIDMappings)
	}
	if !s.Process.NoNewPrivileges {
		t.Error("noNewPrivileges is off")
	}
	if !slices.Contains(s.Process.Env, "FOO=bar") || !slices.Contains(s.Process.Env, "container=tandem") {
		t.Errorf("env %v", s.Process.Env)
	}
	for _, c := range []string{"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_TIME", "CAP_MAC_ADMIN", "CAP_BPF"} {
		if slices.Contains(s.Process.Capabilities.Bounding, c) {
			t.Errorf("%s kept", c)
		}
	}
	for _, c := range []string{"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_BOOT", "CAP_SETUID"} {
		if !slices.Contains(s.Process.Capabilities.Bounding, c) {
			t.Errorf("%s missing: a system container's root needs it inside its namespaces", c)
		}
	}
	if s.Process.Rlimits[0].Hard != 20000 || s.Process.Rlimits[0].Soft != 1024 {
		t.Errorf("rlimits %+v: the hard limit cannot exceed the host's in a user namespace", s.Process.Rlimits)
	}
	if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sysrq-trigger") {
		t.Errorf("masked %v readonly %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActAllow ||
		!slices.Contains(s.Linux.Seccomp.Syscalls[0].Names, "kexec_load") || slices.Contains(s.Linux.Seccomp.Syscalls[0].Names, "reboot") {
		t.Errorf("seccomp %+v", s.Linux.Seccomp)
	}
	if *s.Linux.Resources.Memory.Limit != 64<<20 || *s.Linux.Resources.Memory.Swap != 64<<20 {
		t.Errorf("memory %+v: swap must be off", s.Linux.Resources.Memory)
	}
	mounts := map[string]specs.Mount{}
	for _, m := range s.Mounts {
		mounts[m.Destination] = m
	}
	for _, dst := range []string{"/proc", "/dev", "/dev/pts", "/sys", "/sys/fs/cgroup"} {
		if _, ok := mounts[dst]; !ok {
			t.Errorf("no %s mount", dst)
		}
	}
	if m := mounts["/proc/meminfo"]; m.Source != "/var/lib/lxcfs/proc/meminfo" || m.Type != "bind" {
		t.Errorf("lxcfs meminfo mount %+v", m)
	}
	if !slices.Contains(mounts["/sys"].Options, "ro") {
		t.Error("sysfs is writable")
	}
	// systemd as init makes its scopes in its own cgroup: the cgroup mount is writable, and the
	// cgroup namespace roots it at the container's cgroup (delegateCgroup gives only that subtree).
	if cg := mounts["/sys/fs/cgroup"]; slices.Contains(cg.Options, "ro") || !slices.Contains(nss, specs.CgroupNamespace) {
		t.Errorf("cgroup mount %+v with namespaces %v: systemd cannot make init.scope", cg, nss)
	}
	// It must serialise to what runc reads.
	data, err := json.Marshal(s)
	if err != nil || !json.Valid(data) {
		t.Fatal(err)
	}
}

func TestBuildSpecPrivilegedAndNesting(t *testing.T) {
	in := testInput()
	in.IDs, in.LXCFS, in.Nesting = rootfs.IDMap{}, "", true
	in.HostCapBnd = 0x1fffeffffff // a host without CAP_SYS_RESOURCE
	s := buildSpec(in)
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.UserNamespace {
			t.Error("privileged container has a user namespace")
		}
	}
	if slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_RESOURCE") || !slices.Contains(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN") {
		t.Errorf("privileged caps not cut to the host's bounding set: %v", s.Process.Capabilities.Bounding)
	}
	if len(s.Linux.UIDMappings) != 0 || len(s.Linux.MaskedPaths) != 0 {
		t.Errorf("mappings %v masked %v", s.Linux.UIDMappings, s.Linux.MaskedPaths)
	}
	for _, m := range s.Mounts {
		if m.Type == "bind" {
			t.Errorf("lxcfs mount without lxcfs: %+v", m)
		}
	}
}

// A restore's config carries the network hook and every config names the CRIU config file.
func TestBuildSpecRestoreHook(t *testing.T) {
	in := testInput()
	in.CRIUConfig = "/run/x/criu.conf"
	if s := buildSpec(in); s.Hooks != nil || s.Annotations["org.criu.config"] != in.CRIUConfig {
		t.Errorf("boot config: hooks %+v annotations %v", s.Hooks, s.Annotations)
	}
	in.NetnsHook = []string{"/proc/1/exe", ShimArg, "netns-hook", "/run/x/hook.sock"}
	s := buildSpec(in)
	//lint:ignore SA1019 the check is that the deprecated prestart hook stays unused
	if s.Hooks == nil || len(s.Hooks.CreateRuntime) != 1 || len(s.Hooks.Prestart) != 0 {
		t.Fatalf("restore config hooks: %+v", s.Hooks)
	}
	if h := s.Hooks.CreateRuntime[0]; h.Path != in.NetnsHook[0] || !slices.Equal(h.Args, in.NetnsHook) || h.Timeout == nil {
		t.Errorf("hook %+v", h)
	}
}

func TestEnvFromConfig(t *testing.T) {
	env := envFromConfig(map[string]string{"environment.B": "2", "environment.A": "1", "limits.cpu": "1", "environment.": "x"})
	if !slices.Equal(env, []string{"A=1", "B=2"}) {
		t.Fatal(env)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"": 15, "SIGUSR2": 12, "usr1": 10, "SIGRTMIN+3": 37, "SIGRTMAX-1": 63, "9": 9, "SIGPWR": 30} {
		got, err := parseSignal(in)
		if err != nil || int(got) != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"SIGNOPE", "SIGRTMIN+40", "99"} {
		if _, err := parseSignal(bad); err == nil {
			t.Errorf("parseSignal(%q) succeeded", bad)
		}
	}
}
