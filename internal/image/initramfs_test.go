package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// cpioFile is one entry read back by readCpio.
type cpioFile struct {
	mode         uint32
	data         []byte
	major, minor uint32
}

// readCpio parses a gzip'd newc archive, the way the kernel does.
func readCpio(t *testing.T, path string) (map[string]cpioFile, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	files, order := map[string]cpioFile{}, []string{}
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if off+110 > len(raw) || string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad cpio header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, major, minor, namesize := field(1), field(6), field(9), field(10), field(11)
		name := string(raw[off+110 : off+110+int(namesize)-1])
		off += 110 + int(namesize)
		align()
		data := raw[off : off+int(size)]
		off += int(size)
		align()
		if name == "TRAILER!!!" {
			break
		}
		files[name] = cpioFile{mode: mode, data: data, major: major, minor: minor}
		order = append(order, name)
	}
	return files, order
}

// fakeModules lays out lib/modules/<version> with a modules.dep in Debian's format.
func fakeModules(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "lib/modules/6.1.0-test")
	dep := map[string][]string{
		"kernel/drivers/virtio/virtio.ko":                {"kernel/drivers/virtio/virtio_ring.ko"},
		"kernel/drivers/virtio/virtio_ring.ko":           nil,
		"kernel/drivers/virtio/virtio_pci.ko":            {"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci_legacy_dev.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko": nil,
		"kernel/drivers/virtio/virtio_pci_legacy_dev.ko": nil,
		"kernel/drivers/virtio/virtio_mmio.ko":           {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
		"kernel/drivers/block/virtio_blk.ko":             {"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
		"kernel/drivers/net/virtio_net.ko.zst":           {"kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"},
		"kernel/drivers/net/net_failover.ko":             {"kernel/net/core/failover.ko"},
		"kernel/net/core/failover.ko":                    nil,
		"kernel/lib/crc16.ko":                            nil,
		"kernel/fs/mbcache.ko":                           nil,
		"kernel/fs/jbd2/jbd2.ko":                         nil,
		"kernel/crypto/crc32c_generic.ko":                nil,
		"kernel/fs/ext4/ext4.ko":                         {"kernel/lib/crc16.ko", "kernel/fs/mbcache.ko", "kernel/fs/jbd2/jbd2.ko"},
	}
	var depFile strings.Builder
	for p, deps := range dep {
		full := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		content := []byte("ELF module " + modName(p))
		if strings.HasSuffix(p, ".zst") {
			var buf bytes.Buffer
			zw, _ := zstd.NewWriter(&buf)
			zw.Write(content)
			zw.Close()
			content = buf.Bytes()
		}
		if err := os.WriteFile(full, content, 0o644); err != nil {
			t.Fatal(err)
		}
		depFile.WriteString(p + ": " + strings.Join(deps, " ") + "\n")
	}
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(depFile.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/input/evdev.ko\n"), 0o644)
	return dir
}

func TestBuildInitramfsFakeModules(t *testing.T) {
	if _, err := findBusybox(""); err != nil {
		t.Skipf("skipping: %v", err)
	}
	out := filepath.Join(t.TempDir(), "initrd.img")
	if err := BuildInitramfs(context.Background(), out, fakeModules(t), DefaultInitramfsModules); err != nil {
		t.Fatal(err)
	}
	files, _ := readCpio(t, out)
	if c := files["dev/console"]; c.mode != cpioChr|0o600 || c.major != 5 || c.minor != 1 {
		t.Errorf("dev/console %+v", c)
	}
	if f := files["init"]; f.mode != cpioReg|0o755 || !strings.HasPrefix(string(f.data), "#!/bin/busybox sh") {
		t.Errorf("init %o", f.mode)
	}
	if len(files["bin/busybox"].data) < 100000 {
		t.Error("busybox missing")
	}
	order := strings.Fields(string(files["etc/modules"].data))
	pos := map[string]int{}
	for i, m := range order {
		pos[m] = i
		if _, ok := files["lib/modules/"+m+".ko"]; !ok {
			t.Errorf("module %s listed but not included", m)
		}
	}
	for _, before := range [][2]string{{"virtio_ring", "virtio"}, {"virtio", "virtio_pci"}, {"virtio_pci_modern_dev", "virtio_pci"},
		{"failover", "net_failover"}, {"net_failover", "virtio_net"}, {"jbd2", "ext4"}, {"crc16", "ext4"}, {"virtio_blk", "ext4"}} {
		a, okA := pos[before[0]]
		b, okB := pos[before[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s must load before %s: order %v", before[0], before[1], order)
		}
	}
	if _, ok := pos["evdev"]; ok {
		t.Error("built-in evdev included")
	}
	if got := string(files["lib/modules/virtio_net.ko"].data); got != "ELF module virtio_net" {
		t.Errorf(".ko.zst not decompressed: %q", got)
	}
	// The script must at least parse.
	script := filepath.Join(t.TempDir(), "init")
	os.WriteFile(script, files["init"].data, 0o755)
	if out, err := exec.Command(DefaultBusybox, "sh", "-n", script).CombinedOutput(); err != nil {
		t.Errorf("init does not parse: %v %s", err, out)
	}
	// A module that is neither present nor built in is an error unless marked optional.
	if err := BuildInitramfs(context.Background(), out, fakeModules(t), []string{"nosuchmod"}); err == nil ||
		!strings.Contains(err.Error(), "nosuchmod") {
		t.Errorf("missing module: %v", err)
	}
}

func TestBuildInitramfsGuestKernel(t *testing.T) {
	k, err := FindGuestKernel("")
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	if _, err := findBusybox(""); err != nil {
		t.Skipf("skipping: %v", err)
	}
	out := filepath.Join(t.TempDir(), "initrd.img")
	if err := BuildInitramfs(context.Background(), out, k.ModulesDir, DefaultInitramfsModules); err != nil {
		t.Fatal(err)
	}
	files, _ := readCpio(t, out)
	t.Logf("guest kernel %s: initramfs modules %s", k.Version, strings.Join(strings.Fields(string(files["etc/modules"].data)), " "))
}
