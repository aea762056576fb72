package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
	"tandem/internal/hostexec"
	"tandem/internal/logctx"
	"tandem/internal/progress"
)

// DebianOptions tune BuildDebian.
type DebianOptions struct {
	Release string // default "bookworm"
	// Mirror defaults to the one the host's apt uses (FindDebianMirror).
	Mirror      string
	Output      string // tarball to write; a new file in os.TempDir() if empty
	WorkDir     string // where the rootfs is built (needs ~400 MB); os.TempDir() if empty
	Compression Compression
	Include     []string // packages beyond the defaults
}

// debianPackages make minbase bootable as a container and as a VM: systemd as init, udev for VM
// devices, networkd (in systemd) plus resolved for DHCP and DNS (resolved needs dbus, an
// alternative debootstrap does not resolve by itself), ip and ping to look around.
var debianPackages = []string{"systemd-sysv", "udev", "dbus", "systemd-resolved", "iproute2", "iputils-ping", "kmod"}

// BuildDebian runs debootstrap (minbase, systemd) from the host's Debian mirror, configures DHCP
// with systemd-networkd on en* and eth*, locks root's password, and writes a unified image tarball.
// It needs root and debootstrap. It returns the tarball's path.
func BuildDebian(ctx context.Context, opts DebianOptions) (string, error) {
	if opts.Release == "" {
		opts.Release = "bookworm"
	}
	if !wordRE.MatchString(opts.Release) {
		return "", errdefs.Invalid("invalid Debian release %q", opts.Release)
	}
	if os.Geteuid() != 0 {
		return "", errdefs.Unavailable("building a Debian image needs root (debootstrap)")
	}
	debootstrap, err := hostexec.Look("debootstrap")
	if err != nil {
		return "", err
	}
	if opts.Mirror == "" {
		opts.Mirror = FindDebianMirror("/", opts.Release)
	}
	work, err := os.MkdirTemp(opts.WorkDir, "tandem-debian-")
	if err != nil {
		return "", err
	}
	// mountinfo names real paths: resolve symlinks (a /tmp link) so mountsBelow can match them.
	if real, err := filepath.EvalSymlinks(work); err == nil {
		work, _ = filepath.Abs(real)
	}
	defer cleanupBuildDir(work)
	target := filepath.Join(work, "rootfs")

	progress.Report(ctx, 1, "debootstrap "+opts.Release+" from "+opts.Mirror)
	arch := HostArchitecture()
	args := []string{"--variant=minbase", "--arch=" + debianArch(arch), "--components=main",
		"--include=" + strings.Join(append(append([]string{}, debianPackages...), opts.Include...), ","),
		opts.Release, target, opts.Mirror}
	start := time.Now()
	if err := runDebootstrap(ctx, debootstrap, args); err != nil {
		return "", err
	}
	logctx.From(ctx).Info("image: debootstrap done", "release", opts.Release, "took", time.Since(start).Round(time.Second))

	progress.Report(ctx, 80, "configuring the rootfs")
	if err := configureDebian(ctx, target); err != nil {
		return "", fmt.Errorf("configure debian rootfs: %w", err)
	}
	if m := mountsBelow(target); len(m) > 0 {
		return "", fmt.Errorf("mounts left under %s after debootstrap: %s", target, strings.Join(m, ", "))
	}

	progress.Report(ctx, 85, "packing the image")
	meta := &Metadata{
		OS: "debian", Release: opts.Release, Architecture: arch, Variant: "minbase",
		Description:    fmt.Sprintf("Debian %s (minbase, systemd, networkd DHCP)", opts.Release),
		Types:          []string{TypeContainer, TypeVM},
		KernelCmdline:  DefaultKernelCmdline,
		ShutdownSignal: "SIGRTMIN+3", // systemd: halt.target -> poweroff
		CreatedAt:      time.Now().UTC().Truncate(time.Second),
	}
	out := opts.Output
	if out == "" {
		f, err := os.CreateTemp("", "debian-"+opts.Release+"-*"+opts.Compression.orDefault().fileExt())
		if err != nil {
			return "", err
		}
		out = f.Name()
		f.Close()
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return "", err
	}
	err = PackRootfs(ctx, f, target, meta, PackOptions{Compression: opts.Compression.orDefault(), SkipContents: DefaultSkipContents})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(out)
		return "", err
	}
	progress.Report(ctx, 100, "debian image built")
	return out, nil
}

// debootstrapPhases map debootstrap's "I:" lines to progress.
var debootstrapPhases = []struct {
	prefix  string
	percent int
}{
	{"I: Retrieving Release", 3}, {"I: Validating Packages", 5}, {"I: Resolving dependencies", 6},
	{"I: Retrieving", 8}, {"I: Validating", 20}, {"I: Extracting", 30}, {"I: Installing core", 40},
	{"I: Unpacking", 50}, {"I: Configuring", 65}, {"I: Unpacking the base system", 50},
	{"I: Configuring the base system", 65}, {"I: Base system installed", 79},
}

// runDebootstrap runs debootstrap (in its own process group: a cancelled build also kills the dpkg
// and apt it started), reports its phases, and keeps the tail of its output for the error.
func runDebootstrap(ctx context.Context, path string, args []string) error {
	ctx, cancel := context.WithTimeout(ctx, debootstrapTimeout)
	defer cancel()
	c := hostexec.Command(path, args...)
	c.Env = []string{"DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}
	pr, pw := io.Pipe()
	c.Stdout, c.Stderr = pw, pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		last := 0
		for sc.Scan() {
			line := sc.Text()
			tail = append(tail, line)
			if len(tail) > 30 {
				tail = tail[1:]
			}
			for _, p := range debootstrapPhases {
				if strings.HasPrefix(line, p.prefix) && p.percent > last {
					last = p.percent
					progress.Report(ctx, p.percent, "debootstrap: "+strings.TrimPrefix(line, "I: "))
					break
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err := c.Run(ctx)
	pw.Close()
	<-done
	if ee := (*hostexec.ExitError)(nil); errors.As(err, &ee) {
		return fmt.Errorf("debootstrap %s: %w:\n%s", strings.Join(args, " "), ee.Err, strings.Join(tail, "\n"))
	}
	if err != nil {
		return fmt.Errorf("debootstrap: %w", err)
	}
	return nil
}

// debootstrapTimeout bounds a whole debootstrap: minutes from a good mirror, more from a slow one.
const debootstrapTimeout = time.Hour

// configureDebian turns a debootstrapped tree into an image: no host identity, DHCP by networkd.
func configureDebian(ctx context.Context, root string) error {
	files := map[string]string{
		"etc/hostname": "debian\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/systemd/network/80-tandem-dhcp.network": "# tandem: DHCP on every wired interface (eth* in containers, en* in VMs).\n" +
			"[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
	}
	for rel, data := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		os.Remove(p) // replace rather than write through whatever debootstrap left
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return err
		}
	}
	// An empty machine-id makes systemd generate one on first boot: every instance gets its own.
	if err := os.WriteFile(filepath.Join(root, "etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	os.Remove(filepath.Join(root, "var/lib/dbus/machine-id"))
	// debootstrap copies the host's resolv.conf; resolved's stub (a symlink) is what we want.
	resolv := filepath.Join(root, "etc/resolv.conf")
	if fi, err := os.Lstat(resolv); err == nil && fi.Mode().IsRegular() {
		os.Remove(resolv)
		if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", resolv); err != nil {
			return err
		}
	}
	if err := hostexec.Command("chroot", root, "systemctl", "enable", "systemd-networkd.service", "systemd-resolved.service").Run(ctx); err != nil {
		return err
	}
	if err := lockRootPassword(filepath.Join(root, "etc/shadow")); err != nil {
		return err
	}
	// Caches and logs of the build are not part of the image.
	for _, g := range []string{"var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*",
		"var/log/bootstrap.log", "var/log/dpkg.log", "var/log/apt/*", "tmp/*", "root/.bash_history"} {
		matches, _ := filepath.Glob(filepath.Join(root, g))
		for _, m := range matches {
			os.RemoveAll(m)
		}
	}
	return nil
}

// lockRootPassword makes root's password field "!..." (passwd -l) so that nobody logs in with one.
func lockRootPassword(shadow string) error {
	data, err := os.ReadFile(shadow)
	if err != nil {
		return err
	}
	lines := strings.Split(string(data), "\n")
	found := false
	for i, l := range lines {
		f := strings.Split(l, ":")
		if len(f) > 2 && f[0] == "root" {
			found = true
			if !strings.HasPrefix(f[1], "!") {
				f[1] = "!" + f[1]
			}
			lines[i] = strings.Join(f, ":")
		}
	}
	if !found {
		return fmt.Errorf("no root entry in %s", shadow)
	}
	fi, err := os.Stat(shadow)
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(shadow, []byte(strings.Join(lines, "\n")), fi.Mode().Perm())
}

// mountsBelow lists mount points at or under dir, deepest first.
func mountsBelow(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountPath(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMountPath(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// cleanupBuildDir unmounts what a failed debootstrap left (proc, sys, a bind-mounted /dev) before
// removing the tree: removing through a bind mount of the host's /dev would delete host files.
func cleanupBuildDir(dir string) {
	for _, mp := range mountsBelow(dir) {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
			slog.Warn("image: cannot unmount build leftover", "path", mp, "err", err)
		}
	}
	if m := mountsBelow(dir); len(m) > 0 {
		slog.Error("image: not removing build directory with mounts under it", "dir", dir, "mounts", m)
		return
	}
	if err := os.RemoveAll(dir); err != nil {
		slog.Warn("image: cannot remove build directory", "dir", dir, "err", err)
	}
}
