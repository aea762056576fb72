// Package hostinfo reads what this machine is and what it can run: CPU, memory, disk, KVM, and the
// versions of the components the drivers use.
package hostinfo

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"tandem/api"
)

// Collect reads the machine's facts. dir is the daemon's state dir, whose filesystem is reported.
func Collect(ctx context.Context, dir string) api.Host {
	h := api.Host{Arch: runtime.GOARCH}
	h.Hostname, _ = os.Hostname()
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		h.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	h.CPU = api.HostCPU{Cores: runtime.NumCPU(), Model: cpuModel()}
	h.Memory.Total, h.Memory.Available = Memory()
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		h.Disk = api.HostDisk{Path: dir, Total: st.Blocks * uint64(st.Bsize), Free: st.Bavail * uint64(st.Bsize)}
	}
	h.KVM = kvm()
	h.Versions = api.HostVersions{
		QEMU: version(ctx, "qemu-system-x86_64", "--version"),
		Runc: version(ctx, "runc", "--version"),
		CRIU: version(ctx, "criu", "--version"),
	}
	return h
}

// Memory returns total and available RAM in bytes, from /proc/meminfo.
func Memory() (total, available uint64) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "MemTotal:":
			total = kb << 10
		case "MemAvailable:":
			available = kb << 10
		}
	}
	return total, available
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// kvm reports whether /dev/kvm can be opened and answers the API version ioctl. It cannot tell that a
// guest will hang under broken nested virtualisation; that is what the VM driver's accel setting is for.
func kvm() api.HostKVM {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return api.HostKVM{Reason: err.Error()}
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil || v != 12 {
		return api.HostKVM{Present: true, Reason: "KVM_GET_API_VERSION failed or is not 12"}
	}
	return api.HostKVM{Present: true, Usable: true}
}

var versionRE = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)

// version runs "tool flag" and returns the first version number it prints, "" when absent.
func version(ctx context.Context, tool, flag string) string {
	path, err := exec.LookPath(tool)
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, flag).Output()
	if err != nil {
		return ""
	}
	return versionRE.FindString(string(out))
}
