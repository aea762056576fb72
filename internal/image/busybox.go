package image

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/progress"
)

// DefaultBusybox is where Debian's busybox-static installs the binary.
const DefaultBusybox = "/bin/busybox"

// DefaultKernelCmdline is what the builders record for VMs: a serial console; the VM driver adds
// root= and its own boot-speed flags.
const DefaultKernelCmdline = "console=ttyS0 quiet"

// BusyboxOptions tune BuildBusybox.
type BusyboxOptions struct {
	Busybox     string // the static busybox binary; DefaultBusybox if empty
	Output      string // tarball to write; a new file in os.TempDir() if empty
	Compression Compression
}

// findBusybox checks that path (DefaultBusybox if empty) is a static busybox: a dynamic one would
// find no libc in a busybox rootfs or an initramfs.
func findBusybox(path string) (string, error) {
	if path == "" {
		path = DefaultBusybox
	}
	f, err := elf.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", errdefs.Unavailable("busybox-static is not installed; run scripts/setup.sh")
	}
	if err != nil {
		return "", errdefs.Unavailable("%s is not a usable busybox: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", errdefs.Unavailable("%s is dynamically linked; install busybox-static (scripts/setup.sh)", path)
		}
	}
	return path, nil
}

var busyboxVersionRE = regexp.MustCompile(`BusyBox v([0-9][0-9A-Za-z.+~-]*)`)

// BuildBusybox writes a unified busybox image tarball and returns its path. It needs no network and
// no root: the tarball is written directly, and every mtime is the busybox binary's, so the same
// binary always gives the same fingerprint.
func BuildBusybox(ctx context.Context, opts BusyboxOptions) (string, error) {
	bb, err := findBusybox(opts.Busybox)
	if err != nil {
		return "", err
	}
	progress.Report(ctx, 5, "reading busybox")
	fi, err := os.Stat(bb)
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return "", err
	}
	banner, _ := exec.CommandContext(ctx, bb).CombinedOutput()
	version := "unknown"
	if m := busyboxVersionRE.FindSubmatch(banner); m != nil {
		version = string(m[1])
	}
	list, err := exec.CommandContext(ctx, bb, "--list-full").Output()
	if err != nil {
		return "", fmt.Errorf("%s --list-full: %w", bb, err)
	}
	mtime := fi.ModTime().UTC().Truncate(time.Second)
	meta := &Metadata{
		OS: "busybox", Release: version, Architecture: HostArchitecture(), Variant: "default",
		Description:   "BusyBox " + version + " (busybox init, udhcpc)",
		Types:         []string{TypeContainer, TypeVM},
		KernelCmdline: DefaultKernelCmdline,
		// busybox init: SIGUSR2 powers off, SIGTERM reboots, SIGUSR1 halts.
		ShutdownSignal: "SIGUSR2",
		CreatedAt:      mtime,
	}
	out := opts.Output
	if out == "" {
		f, err := os.CreateTemp("", "busybox-*"+opts.Compression.orDefault().fileExt())
		if err != nil {
			return "", err
		}
		out = f.Name()
		f.Close()
	}
	progress.Report(ctx, 20, "writing busybox image")
	if err := writeBusybox(out, meta, data, list, mtime, opts.Compression); err != nil {
		os.Remove(out)
		return "", err
	}
	progress.Report(ctx, 100, "busybox image built")
	return out, nil
}

func (c Compression) orDefault() Compression {
	if c == "" {
		return CompressionZstd
	}
	return c
}

func writeBusybox(out string, meta *Metadata, bb, list []byte, mtime time.Time, c Compression) error {
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	iw, err := newImageWriter(f, c.orDefault(), meta, mtime)
	if err != nil {
		return err
	}
	for _, d := range []struct {
		rel  string
		mode int64
	}{
		{"", 0o755}, {"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755},
		{"usr/sbin", 0o755}, {"usr/share", 0o755}, {"usr/share/udhcpc", 0o755}, {"etc", 0o755},
		{"etc/init.d", 0o755}, {"etc/acpi", 0o755}, {"etc/acpi/PWRF", 0o755}, {"dev", 0o755},
		{"proc", 0o555}, {"sys", 0o555}, {"run", 0o755}, {"tmp", 0o1777}, {"root", 0o700},
		{"home", 0o755}, {"mnt", 0o755}, {"var", 0o755}, {"var/log", 0o755},
	} {
		if err := iw.dir(d.rel, d.mode); err != nil {
			return err
		}
	}
	if err := iw.file("bin/busybox", 0o755, bb); err != nil {
		return err
	}
	if err := iw.symlink("var/run", "../run"); err != nil {
		return err
	}
	// Applets as absolute symlinks: they resolve inside the rootfs, whatever the directory depth.
	for _, p := range strings.Fields(string(list)) {
		if p == "bin/busybox" || p == "linuxrc" || strings.Contains(p, "..") {
			continue
		}
		if err := iw.symlink(p, "/bin/busybox"); err != nil {
			return err
		}
	}
	for _, fl := range busyboxFiles(meta.Release) {
		if err := iw.file(fl.rel, fl.mode, []byte(fl.data)); err != nil {
			return err
		}
	}
	if err := iw.Close(); err != nil {
		return err
	}
	return f.Sync()
}

type rootFile struct {
	rel  string
	mode int64
	data string
}

func busyboxFiles(version string) []rootFile {
	return []rootFile{
		{"etc/inittab", 0o644, busyboxInittab},
		{"etc/init.d/rcS", 0o755, busyboxRcS},
		{"etc/init.d/rcK", 0o755, busyboxRcK},
		{"etc/init.d/console", 0o755, busyboxConsole},
		{"usr/share/udhcpc/default.script", 0o755, udhcpcScript},
		{"etc/acpi/PWRF/00000080", 0o755, "#!/bin/sh\n# ACPI power button (QEMU system_powerdown), seen by acpid.\nexec /sbin/poweroff\n"},
		{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		{"etc/group", 0o644, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"},
		{"etc/shadow", 0o600, "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"},
		{"etc/hostname", 0o644, "busybox\n"},
		{"etc/hosts", 0o644, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"},
		{"etc/resolv.conf", 0o644, ""},
		{"etc/fstab", 0o644, "# The root filesystem is mounted by the initramfs (VM) or the runtime (container).\n"},
		{"etc/profile", 0o644, "export PATH=/sbin:/usr/sbin:/bin:/usr/bin\nexport PS1='\\h:\\w\\$ '\numask 022\n"},
		{"etc/os-release", 0o644, fmt.Sprintf("NAME=BusyBox\nID=busybox\nVERSION_ID=%s\nPRETTY_NAME=\"BusyBox %s\"\n", version, version)},
	}
}

// busybox init: SIGUSR2 = poweroff, SIGTERM = reboot, SIGUSR1 = halt; all run ::shutdown first.
const busyboxInittab = `# tandem busybox image. busybox init: SIGUSR2 = poweroff, SIGTERM = reboot, SIGUSR1 = halt.
::sysinit:/etc/init.d/rcS
::respawn:/etc/init.d/console
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
`

const busyboxRcS = `#!/bin/sh
# Boot. A container runtime may have mounted these already, and some mounts (devtmpfs) are not
# allowed in a user namespace: neither is an error.
mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc proc /proc 2>/dev/null
mounted /sys || mount -t sysfs sysfs /sys 2>/dev/null
mounted /dev || mount -t devtmpfs devtmpfs /dev 2>/dev/null || mdev -s 2>/dev/null
mkdir -p /dev/pts /dev/shm 2>/dev/null
mounted /dev/pts || mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts 2>/dev/null
mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null
mount -o remount,rw / 2>/dev/null
[ -s /etc/hostname ] && hostname -F /etc/hostname 2>/dev/null
ip link set lo up 2>/dev/null
# VMs: poweroff on the ACPI power button (the initramfs loads button and evdev).
if ls /dev/input/event* >/dev/null 2>&1; then acpid 2>/dev/null; fi
# DHCP in the background so that boot does not wait for a lease.
if [ -e /sys/class/net/eth0 ]; then
	udhcpc -b -i eth0 -p /run/udhcpc.eth0.pid -s /usr/share/udhcpc/default.script \
		-x hostname:"$(hostname)" >/dev/null 2>&1
fi
exit 0
`

const busyboxRcK = `#!/bin/sh
# Shutdown, run by init before it kills every process and powers off.
[ -f /run/udhcpc.eth0.pid ] && kill "$(cat /run/udhcpc.eth0.pid)" 2>/dev/null
sync
umount -a -r 2>/dev/null
exit 0
`

const busyboxConsole = `#!/bin/sh
# The console shell. In a VM it runs on the real console device (ttyS0), made its controlling
# terminal so that job control and Ctrl-C work; in a container on init's stdio (the runtime's
# console). A container started without a terminal gets no shell, and no respawn loop.
if ! [ -t 0 ]; then
	while :; do sleep 86400; done
fi
con=$(cat /sys/class/tty/console/active 2>/dev/null)
con=${con##* }
if [ -n "$con" ] && [ "$con" != console ] && [ -c "/dev/$con" ]; then
	setsid -c /bin/sh -l <>"/dev/$con" >&0 2>&1
else
	/bin/cttyhack /bin/sh -l
fi
sleep 1
`

const udhcpcScript = `#!/bin/sh
# udhcpc event handler: apply the lease with ip(8) and write resolv.conf. resolv.conf is rewritten
# in place (not renamed over) because a container runtime may bind-mount it.
[ -n "$1" ] || exit 1
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface" 2>/dev/null
	ip link set "$interface" up
	;;
bound|renew)
	if ! ip -4 addr show dev "$interface" | grep -q " $ip/${mask:-24} "; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
	fi
	if [ -n "$router" ]; then
		while ip -4 route del default dev "$interface" 2>/dev/null; do :; done
		for r in $router; do ip route add default via "$r" dev "$interface" && break; done
	fi
	{
		[ -n "$domain" ] && echo "search $domain"
		for d in $dns; do echo "nameserver $d"; done
	} > /etc/resolv.conf
	;;
esac
exit 0
`
