package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"tandem/internal/hostexec"
	"tandem/internal/progress"
	"tandem/internal/testenv"
)

// TestBusyboxImageLifecycle builds the busybox image, exports it, deletes it, imports it back
// (same fingerprint), unpacks it and makes a root disk from it.
func TestBusyboxImageLifecycle(t *testing.T) {
	testenv.Require(t, "root", "busybox")
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
	if _, err := hostexec.Look("mkfs.ext4"); err == nil {
		disk, err := BuildRootDisk(context.Background(), rootfs, filepath.Join(t.TempDir(), "busybox.qcow2"), 0)
		if err != nil {
			t.Fatal(err)
		}
		if disk.Format == DiskRaw {
			checkExt4(t, disk.Path, "/etc/hostname", "busybox\n")
		}
	}
}

func TestBusyboxMissing(t *testing.T) {
	_, err := BuildBusybox(context.Background(), BusyboxOptions{Busybox: filepath.Join(t.TempDir(), "busybox")})
	if err == nil || !strings.Contains(err.Error(), "busybox-static is not installed; run scripts/setup.sh") {
		t.Fatalf("missing busybox: %v", err)
	}
}
