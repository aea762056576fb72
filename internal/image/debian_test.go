package image_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/driver/vm"
	"tandem/internal/driver/vm/vmtest"
	"tandem/internal/image"
	"tandem/internal/progress"
	"tandem/internal/testenv"
)

// TestDebianImage runs debootstrap from the host's mirror (minutes; skipped in -short) and checks
// the tree, then boots the image as tandemd does, through the VM driver and its initramfs: systemd
// reaches the serial getty under the instance's hostname, the guest agent (a unit the initramfs
// installs) answers, and logind powers off on the ACPI button. It is an external test because the
// VM driver imports this package.
func TestDebianImage(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: debootstrap takes minutes (-short)")
	}
	testenv.Require(t, "root", "debootstrap")
	mirror := image.FindDebianMirror("/", "bookworm")
	if strings.HasPrefix(mirror, "http") {
		hc := &http.Client{Timeout: 15 * time.Second}
		resp, err := hc.Get(mirror + "/dists/bookworm/Release")
		if err != nil {
			testenv.Unsupported(t, "mirror %s unreachable: %v", mirror, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			testenv.Unsupported(t, "mirror %s: %s", mirror, resp.Status)
		}
	}
	ctx := testenv.Context(t, 15*time.Minute)
	last := ""
	ctx = progress.With(ctx, func(p int, msg string) {
		if msg != last {
			t.Logf("%3d%% %s", p, msg)
			last = msg
		}
	})
	s, err := image.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	img, err := s.Build(ctx, image.BuildOptions{Kind: "debian", Release: "bookworm", WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debian bookworm image %s: %d MiB compressed, %d MiB content, built and imported in %s",
		img.Fingerprint[:12], img.Size>>20, img.ContentSize>>20, time.Since(start).Round(time.Second))
	if img.Metadata.ShutdownSignal != "SIGRTMIN+3" || img.Metadata.OS != "debian" || len(img.Aliases) != 2 {
		t.Errorf("image %+v", img)
	}
	// The tree the VM driver will get: the rootfs cache's unpack, checked before it boots.
	cache, err := image.NewRootfsCache(s, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rootfs, _, err := cache.Rootfs(ctx, "debian-bookworm")
	if err != nil {
		t.Fatal(err)
	}
	checkDebianTree(t, rootfs)
	if t.Failed() {
		return
	}
	bootDebian(t, ctx, cache, img.Fingerprint)
}

func checkDebianTree(t *testing.T, rootfs string) {
	t.Helper()
	// /sbin/init -> /lib/systemd/systemd, which resolves only inside the rootfs: compare the tail.
	if l, _ := os.Readlink(filepath.Join(rootfs, "sbin/init")); !strings.HasSuffix(l, "systemd/systemd") {
		t.Errorf("/sbin/init -> %q", l)
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
			first, _, _ := strings.Cut(string(data), "\n")
			t.Errorf("%s: %q %v", p, first, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")); err != nil {
		t.Errorf("networkd not enabled: %v", err)
	}
	if l, _ := os.Readlink(filepath.Join(rootfs, "etc/resolv.conf")); !strings.Contains(l, "systemd/resolve") {
		t.Errorf("resolv.conf -> %q", l)
	}
	if ents, _ := os.ReadDir(filepath.Join(rootfs, "dev")); len(ents) != 0 {
		t.Errorf("/dev has %d entries in the image", len(ents))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(rootfs, "usr/bin/passwd"), &st); err == nil && st.Mode&syscall.S_ISUID == 0 {
		t.Error("setuid bit of passwd lost")
	}
}

// bootDebian launches the image on a VM driver over the store's rootfs cache. Every wait has a
// deadline and says "hung" when it passes.
func bootDebian(t *testing.T, ctx context.Context, images driver.Images, fingerprint string) {
	testenv.Require(t, vmtest.Components...)
	d := vmtest.NewDriver(t, vmtest.NewDirs(t), images)
	h, err := d.Create(ctx, &driver.Spec{ID: uuid.NewString(), Name: "deb1", Type: "vm", Image: fingerprint,
		Config: map[string]string{"limits.memory": "512MiB"}})
	if err != nil {
		t.Fatal(err)
	}
	console := func() string {
		data, _ := os.ReadFile(d.ConsoleLogPath(h))
		return strings.ReplaceAll(string(data), "\r", "")
	}
	defer func() {
		if t.Failed() {
			c := console()
			t.Logf("console:\n%s", c[max(0, len(c)-4000):])
		}
		d.Delete(context.WithoutCancel(ctx), h)
	}()
	start := time.Now()
	if err := d.Start(ctx, h); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(150 * time.Second); !strings.Contains(console(), "deb1 login:"); time.Sleep(500 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("hung: no \"deb1 login:\" prompt on the console after 150s")
		}
	}
	t.Logf("login prompt on the console after %s", time.Since(start).Round(100*time.Millisecond))
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var out strings.Builder
	if code, err := d.Exec(actx, h, vm.ExecRequest{Cmd: []string{"sh", "-c", "hostname; . /etc/os-release; echo $VERSION_CODENAME"}, Stdout: &out}); err != nil || code != 0 || out.String() != "deb1\nbookworm\n" {
		t.Errorf("exec through the guest agent: %d %q %v", code, out.String(), err)
	}
	start = time.Now()
	if err := d.Stop(ctx, h, driver.StopOpts{Timeout: 90 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop took %s", time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(console(), "reboot: Power down") || time.Since(start) > 85*time.Second {
		t.Error("hung: systemd did not power off on the ACPI button")
	}
}
