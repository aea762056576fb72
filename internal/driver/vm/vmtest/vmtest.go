// Package vmtest has what tests that boot real VMs share: the checks that skip them on hosts that
// cannot, the guest agent built from source, a busybox image, and a driver on temporary dirs.
package vmtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"tandem/internal/driver"
	"tandem/internal/driver/vm"
	"tandem/internal/image"
	"tandem/internal/testenv"
)

// KernelDir is the guest kernel tests use: $TANDEM_GUEST_DIR, else vm.DefaultKernelDir.
func KernelDir() string { return testenv.GuestKernelDir() }

// Components is what booting a VM needs (testenv.Require's names).
var Components = []string{"root", "qemu", "qemu-img", "e2fsprogs", "guest-kernel", "busybox"}

// Busybox returns the host's static busybox (testenv's "busybox" component).
func Busybox() string { return testenv.Busybox }

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
)

// Agent builds cmd/tandem-agent (static, as the daemon ships it) once per test process, into a
// directory named after a hash of the agent's sources so that runs share it instead of piling up.
func Agent(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..", "..", "..")
		h := sha256.New()
		srcs, _ := filepath.Glob(filepath.Join(root, "cmd", "tandem-agent", "*.go"))
		more, _ := filepath.Glob(filepath.Join(root, "internal", "agent", "*.go"))
		for _, f := range append(append(srcs, more...), filepath.Join(root, "go.mod")) {
			b, _ := os.ReadFile(f)
			h.Write(b)
		}
		dir := filepath.Join(os.TempDir(), "tandem-vmtest-agent", hex.EncodeToString(h.Sum(nil))[:16])
		agentPath = filepath.Join(dir, "tandem-agent")
		if _, err := os.Stat(agentPath); err == nil {
			return
		}
		if agentErr = os.MkdirAll(dir, 0o755); agentErr != nil {
			return
		}
		tmp := fmt.Sprintf("%s.%d", agentPath, os.Getpid())
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, "./cmd/tandem-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentErr = fmt.Errorf("building tandem-agent: %v\n%s", err, out)
			return
		}
		agentErr = os.Rename(tmp, agentPath)
	})
	if agentErr != nil {
		t.Fatal(agentErr)
	}
	return agentPath
}

// Images serves the busybox image (image.BuildBusybox, unpacked) under any name.
type Images struct {
	dir  string
	info driver.ImageInfo
}

// BusyboxImages builds the busybox image into a temporary dir of the test.
func BusyboxImages(t testing.TB) *Images {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	tarball, err := image.BuildBusybox(ctx, image.BusyboxOptions{Busybox: Busybox(), Output: filepath.Join(dir, "busybox.tar.zst")})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(tarball)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	f.Seek(0, io.SeekStart)
	rootfs := filepath.Join(dir, "rootfs")
	if err := image.Unpack(ctx, f, rootfs, image.UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	return &Images{dir: rootfs, info: driver.ImageInfo{
		Fingerprint: hex.EncodeToString(h.Sum(nil)), OS: "busybox", ShutdownSignal: "SIGUSR2",
		KernelCmdline: image.DefaultKernelCmdline,
	}}
}

// Rootfs implements driver.Images.
func (i *Images) Rootfs(ctx context.Context, name string) (string, driver.ImageInfo, error) {
	return i.dir, i.info, nil
}

// Dirs are a test driver's directories; RunDir is short (socket paths).
type Dirs struct{ Dir, RunDir string }

// NewDirs makes a state dir and a short run dir, removed when the test ends.
func NewDirs(t testing.TB) Dirs {
	t.Helper()
	run, err := os.MkdirTemp("", "tvm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	return Dirs{Dir: t.TempDir(), RunDir: run}
}

// NewDriver returns a TCG driver on dirs with the busybox image, the agent, and user-mode NICs.
func NewDriver(t testing.TB, dirs Dirs, images driver.Images) *vm.Driver {
	t.Helper()
	d, err := vm.New(vm.Options{Dir: dirs.Dir, RunDir: dirs.RunDir, Images: images, Accel: "tcg",
		KernelDir: KernelDir(), AgentPath: Agent(t), Busybox: Busybox(), UserNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	return d
}
