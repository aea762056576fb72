package bootfs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"tandem/internal/testenv"
)

func TestResolveModulesOrder(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	mods, skipped, err := ResolveModules(dir, []string{"virtio_pci", "virtio-rng", "ext4", "rng_core"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	want := []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci", "virtio_rng", "jbd2", "mbcache", "crc16", "ext4"}
	if !slices.Equal(names, want) {
		t.Errorf("order %q, want %q", names, want)
	}
	if !slices.Equal(skipped, []string{"rng_core"}) {
		t.Errorf("skipped %q", skipped)
	}
}

// The archive must unpack with a standard cpio and hold what init needs.
func TestInitramfsUnpacks(t *testing.T) {
	testenv.Require(t, "busybox")
	bb := testenv.Busybox
	mdir := t.TempDir()
	os.MkdirAll(filepath.Join(mdir, "kernel"), 0o755)
	os.WriteFile(filepath.Join(mdir, "kernel", "virtio.ko"), []byte("ELF-virtio"), 0o644)
	os.WriteFile(filepath.Join(mdir, "modules.dep"), []byte("kernel/virtio.ko:\n"), 0o644)
	agent := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755)
	s := Initramfs{Busybox: bb, ModulesDir: mdir, Agent: agent}
	cache := t.TempDir()
	path, err := s.Build(context.Background(), cache)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := s.Build(context.Background(), cache)
	if again != path {
		t.Errorf("second build made %s, want the cached %s", again, path)
	}
	out := t.TempDir()
	data, _ := os.ReadFile(path)
	cmd := exec.Command(bb, "cpio", "-i", "-d")
	cmd.Dir, cmd.Stdin = out, bytes.NewReader(data)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v %s", err, b)
	}
	for _, f := range []string{"init", "bin/busybox", "lib/modules/virtio.ko", "tandem/tandem-agent", "etc/tandem/modules"} {
		fi, err := os.Stat(filepath.Join(out, f))
		if err != nil {
			t.Errorf("missing %s: %v", f, err)
			continue
		}
		if (f == "init" || f == "tandem/tandem-agent") && fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", f)
		}
	}
	order, _ := os.ReadFile(filepath.Join(out, "etc/tandem/modules"))
	if strings.TrimSpace(string(order)) != "virtio" {
		t.Errorf("modules list %q", order)
	}
	list, _ := exec.Command(bb, "sh", "-c", "cpio -t -v < "+path).CombinedOutput()
	if !strings.Contains(string(list), "dev/console") {
		t.Errorf("no dev/console node:\n%s", list)
	}
}

func TestRefusesDynamicBusybox(t *testing.T) {
	if err := CheckStatic("/bin/ls"); err == nil {
		t.Error("a dynamic binary passed as static")
	}
}
