package image

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/progress"
)

// TestBusyboxImageLifecycle builds the busybox image, exports it, deletes it, imports it back
// (same fingerprint), unpacks it and makes a root disk from it.
func TestBusyboxImageLifecycle(t *testing.T) {
	requireRoot(t)
	if _, err := findBusybox(""); err != nil {
		t.Skipf("skipping: %v", err)
	}
	s := openStore(t)
	var phases []string
	ctx := progress.With(context.Background(), func(p int, msg string) {
		if len(phases) == 0 || phases[len(phases)-1] != msg {
			phases = append(phases, msg)
		}
	})
	img, err := s.Build(ctx, BuildOptions{Kind: "busybox"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s (%d bytes), progress: %s", img.Fingerprint[:12], img.Size, strings.Join(phases, " / "))
	m := img.Metadata
	if m.OS != "busybox" || m.ShutdownSignal != "SIGUSR2" || !m.Supports(TypeContainer) || !m.Supports(TypeVM) ||
		m.KernelCmdline == "" || len(img.Aliases) != 1 || img.Aliases[0] != "busybox" {
		t.Errorf("image %+v", img)
	}
	// Rebuilding gives the same file, so the same image.
	again, err := s.Build(context.Background(), BuildOptions{Kind: "busybox"})
	if err != nil || again.Fingerprint != img.Fingerprint {
		t.Errorf("rebuild: %v, fingerprint %s vs %s", err, again.Fingerprint, img.Fingerprint)
	}

	exported := filepath.Join(t.TempDir(), "busybox.tar.zst")
	f, err := os.Create(exported)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Export(context.Background(), "busybox", f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := s.Delete("busybox"); err != nil {
		t.Fatal(err)
	}
	back, err := s.ImportFile(context.Background(), exported, ImportOptions{Aliases: []string{"busybox"}})
	if err != nil {
		t.Fatal(err)
	}
	if back.Fingerprint != img.Fingerprint {
		t.Fatalf("re-import fingerprint %s, want %s", back.Fingerprint, img.Fingerprint)
	}

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := s.UnpackRootfs(context.Background(), "busybox", rootfs, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, _ := os.Readlink(filepath.Join(rootfs, "sbin/init")); l != "/bin/busybox" {
		t.Errorf("/sbin/init -> %q", l)
	}
	for _, p := range []string{"etc/inittab", "etc/init.d/rcS", "etc/init.d/rcK", "usr/share/udhcpc/default.script", "etc/passwd", "etc/group"} {
		if _, err := os.Stat(filepath.Join(rootfs, p)); err != nil {
			t.Error(err)
		}
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(rootfs, "tmp"), &st)
	if st.Mode&0o1777 != 0o1777 {
		t.Errorf("/tmp mode %o", st.Mode)
	}
	// The scripts parse, and the rootfs runs busybox when chrooted into.
	for _, script := range []string{"/etc/init.d/rcS", "/etc/init.d/rcK", "/etc/init.d/console", "/usr/share/udhcpc/default.script"} {
		if out, err := exec.Command("chroot", rootfs, "/bin/sh", "-n", script).CombinedOutput(); err != nil {
			t.Errorf("%s: %v %s", script, err, out)
		}
	}
	out, err := exec.Command("chroot", rootfs, "/bin/sh", "-c", ". /etc/os-release; echo $ID; id -un").CombinedOutput()
	if err != nil || string(out) != "busybox\nroot\n" {
		t.Errorf("chroot: %q %v", out, err)
	}
	if _, err := lookTool("mkfs.ext4"); err == nil {
		disk, err := BuildRootDisk(context.Background(), rootfs, filepath.Join(t.TempDir(), "busybox.qcow2"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if disk.Format == DiskRaw {
			checkExt4(t, disk.Path, "/etc/hostname", "busybox\n")
		}
	}
}

// TestDebianImage runs debootstrap from the host's mirror (minutes; skipped in -short).
func TestDebianImage(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: debootstrap takes minutes (-short)")
	}
	requireRoot(t)
	if _, err := lookTool("debootstrap"); err != nil {
		t.Skipf("skipping: %v", err)
	}
	mirror := FindDebianMirror("/", "bookworm")
	if strings.HasPrefix(mirror, "http") {
		hc := &http.Client{Timeout: 15 * time.Second}
		resp, err := hc.Head(mirror + "/dists/bookworm/Release")
		if err != nil {
			t.Skipf("skipping: mirror %s unreachable: %v", mirror, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Skipf("skipping: mirror %s: %s", mirror, resp.Status)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	last := ""
	ctx = progress.With(ctx, func(p int, msg string) {
		if msg != last {
			t.Logf("%3d%% %s", p, msg)
			last = msg
		}
	})
	s := openStore(t)
	start := time.Now()
	img, err := s.Build(ctx, BuildOptions{Kind: "debian", Release: "bookworm", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debian bookworm image %s: %d MiB compressed, %d MiB content, built and imported in %s",
		img.Fingerprint[:12], img.Size>>20, img.ContentSize>>20, time.Since(start).Round(time.Second))
	if img.Metadata.ShutdownSignal != "SIGRTMIN+3" || img.Metadata.OS != "debian" || len(img.Aliases) != 2 {
		t.Errorf("image %+v", img)
	}
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := s.UnpackRootfs(context.Background(), "debian-bookworm", rootfs, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	init, err := filepath.EvalSymlinks(filepath.Join(rootfs, "sbin/init"))
	if err != nil {
		t.Fatal(err)
	}
	// /sbin/init -> /lib/systemd/systemd, resolved on the host: the rootfs is under a temp dir, so
	// compare the tail.
	if l, _ := os.Readlink(filepath.Join(rootfs, "sbin/init")); !strings.HasSuffix(l, "systemd/systemd") {
		t.Errorf("/sbin/init -> %q (%s)", l, init)
	}
	checks := map[string]func(string) bool{
		"etc/systemd/network/80-tandem-dhcp.network": func(s string) bool { return strings.Contains(s, "DHCP=yes") },
		"etc/hostname":   func(s string) bool { return s == "debian\n" },
		"etc/machine-id": func(s string) bool { return s == "" },
		"etc/shadow":     func(s string) bool { return strings.HasPrefix(s, "root:!") },
	}
	for p, ok := range checks {
		data, err := os.ReadFile(filepath.Join(rootfs, p))
		if err != nil || !ok(string(data)) {
			t.Errorf("%s: %q %v", p, firstLine(string(data)), err)
		}
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")); err != nil {
		t.Errorf("networkd not enabled: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(rootfs, "etc/resolv.conf")); !strings.Contains(l, "systemd/resolve") {
		t.Errorf("resolv.conf -> %q", l)
	}
	ents, _ := os.ReadDir(filepath.Join(rootfs, "dev"))
	if len(ents) != 0 {
		t.Errorf("/dev has %d entries in the image", len(ents))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(rootfs, "usr/bin/passwd"), &st); err == nil && st.Mode&syscall.S_ISUID == 0 {
		t.Error("setuid bit of passwd lost")
	}
	if t.Failed() {
		return
	}
	// As a VM: systemd reaches the serial getty, and logind powers off on the ACPI button.
	v := bootRootfs(t, ctx, rootfs, img.Metadata.KernelCmdline)
	waitFor(t, v.con, "debian login:", 150*time.Second)
	t.Logf("login prompt on the console after %s", time.Since(v.start).Round(100*time.Millisecond))
	v.powerdown(t, 90*time.Second)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func TestBusyboxMissing(t *testing.T) {
	_, err := BuildBusybox(context.Background(), BusyboxOptions{Busybox: filepath.Join(t.TempDir(), "busybox")})
	if err == nil || !strings.Contains(err.Error(), "busybox-static is not installed; run scripts/setup.sh") {
		t.Fatalf("missing busybox: %v", err)
	}
}
