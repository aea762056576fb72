package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/testenv"
)

// fakeRootfs makes a small tree with the file kinds a rootfs has.
func fakeRootfs(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "rootfs")
	writeFile(t, dir+"/etc/hostname", "image\n")
	writeFile(t, dir+"/bin/busybox", strings.Repeat("x", 100000))
	os.Symlink("busybox", dir+"/bin/sh")
	os.Link(dir+"/bin/busybox", dir+"/bin/ls")
	os.Chmod(dir+"/bin/busybox", 0o755)
	syscall.Mkfifo(dir+"/fifo", 0o600)
	return dir
}

func TestContainerRootDir(t *testing.T) {
	m, ctx := defaultPool(t)
	rootfs := fakeRootfs(t)
	v := must[*Volume](t)(m.CreateInstanceRoot(ctx, "default", "c1", TypeContainer, ImageSource{RootfsDir: rootfs}, 0))
	if v.Format != FormatDir || v.Ref() != "container/c1" || len(v.UsedBy) != 1 || v.UsedBy[0].Instance != "c1" {
		t.Fatalf("root %+v", v)
	}
	dir, unmount := must2(t)(m.MountVolume(ctx, "default", "container/c1"))
	defer unmount()
	if readFile(t, dir+"/etc/hostname") != "image\n" {
		t.Fatal("rootfs not copied")
	}
	var a, b syscall.Stat_t
	syscall.Stat(dir+"/bin/busybox", &a)
	syscall.Stat(dir+"/bin/ls", &b)
	if link, _ := os.Readlink(dir + "/bin/sh"); link != "busybox" || a.Ino != b.Ino || a.Mode&0o777 != 0o755 {
		t.Fatalf("symlink %q, hard link kept %v, mode %o", link, a.Ino == b.Ino, a.Mode&0o777)
	}
	_, err := m.CreateInstanceRoot(ctx, "default", "c1", TypeContainer, ImageSource{RootfsDir: rootfs}, 0)
	wantKind(t, err, errdefs.ErrAlreadyExists)
	wantKind(t, m.DeleteVolume(ctx, "default", "container/c1"), errdefs.ErrConflict, "attached to c1")
	unmount()
	if err := m.DeleteInstanceRoot(ctx, "default", "c1", TypeContainer); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteInstanceRoot(ctx, "default", "c1", TypeContainer); err != nil { // idempotent
		t.Fatal(err)
	}
	_, err = m.CreateInstanceRoot(ctx, "default", "c2", TypeContainer, ImageSource{}, 0)
	wantKind(t, err, errdefs.ErrInvalidArgument, "rootfs")
	_, err = m.CreateInstanceRoot(ctx, "default", "c2", "pod", ImageSource{RootfsDir: rootfs}, 0)
	wantKind(t, err, errdefs.ErrInvalidArgument, "container or vm")
}

// With a size (limits.disk), or on a shared pool, a container root is an ext4 image, filled
// without mounting anything.
func TestContainerRootExt4(t *testing.T) {
	testenv.Require(t, "e2fsprogs")
	m, ctx := defaultPool(t)
	rootfs := fakeRootfs(t)
	v := must[*Volume](t)(m.CreateInstanceRoot(ctx, "default", "c1", TypeContainer, ImageSource{RootfsDir: rootfs}, 64<<20))
	img := must[string](t)(m.VolumePath("default", "container/c1"))
	out, err := exec.Command("debugfs", "-R", "cat /etc/hostname", img).Output()
	if v.Format != FormatExt4 || v.Size != 64<<20 || err != nil || string(out) != "image\n" {
		t.Fatalf("root %+v: debugfs %q %v", v, out, err)
	}
	_, err = m.CreateInstanceRoot(ctx, "default", "c2", TypeContainer, ImageSource{RootfsDir: rootfs}, 4<<20)
	wantKind(t, err, errdefs.ErrInvalidArgument, "do not fit")

	must[*Pool](t)(m.CreatePool(ctx, PoolConfig{Name: "sh", Driver: DriverShared, Source: t.TempDir()}))
	v = must[*Volume](t)(m.CreateInstanceRoot(ctx, "sh", "c3", TypeContainer, ImageSource{RootfsDir: rootfs}, 0))
	if v.Format != FormatExt4 || v.Size != DefaultRootSize || v.Usage > 200<<20 {
		t.Fatalf("shared root %+v", v)
	}
}

func TestVMRootOverlays(t *testing.T) {
	testenv.Require(t, "qemu-img")
	m, ctx := defaultPool(t)
	base := filepath.Join(t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "create", "-f", "raw", base, "32M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	src := ImageSource{Fingerprint: "f00d", BaseDisk: base, BaseFormat: "raw"}
	v1 := must[*Volume](t)(m.CreateInstanceRoot(ctx, "default", "v1", TypeVM, src, 0))
	v2 := must[*Volume](t)(m.CreateInstanceRoot(ctx, "default", "v2", TypeVM, src, 64<<20))
	if v1.Base != "f00d.vm" || v1.Size != 32<<20 || v2.Size != 64<<20 || v1.Format != FormatQcow2 {
		t.Fatalf("roots %+v %+v", v1, v2)
	}
	p1 := must[string](t)(m.VolumePath("default", "vm/v1"))
	info, err := qemuImgInfo(ctx, p1, "qcow2")
	if err != nil || info.Backing != "../../../volumes/image/f00d.vm/disk.qcow2" {
		t.Fatalf("overlay %+v %v", info, err)
	}
	checkChain(t, p1)
	_, err = m.CreateInstanceRoot(ctx, "default", "v3", TypeVM, src, 16<<20)
	wantKind(t, err, errdefs.ErrInvalidArgument, "smaller than the image")
	_, err = m.CreateInstanceRoot(ctx, "default", "v3", TypeVM, ImageSource{BaseDisk: base}, 0)
	wantKind(t, err, errdefs.ErrInvalidArgument, "fingerprint")
	vols := must[[]Volume](t)(m.ListVolumes(ctx, "default"))
	if len(vols) != 3 || vols[0].Ref() != "image/f00d.vm" {
		t.Fatalf("volumes %+v", vols)
	}
	wantKind(t, m.DeleteVolume(ctx, "default", "image/f00d.vm"), errdefs.ErrConflict, "vm/v1")

	// A snapshot restored keeps its backing; a copy in the pool keeps the base, one elsewhere is flat.
	must0(t, m.SnapshotVolume(ctx, "default", "vm/v1", "s"))
	must0(t, m.RestoreVolume(ctx, "default", "vm/v1", "s"))
	checkChain(t, p1)
	c := must[*Volume](t)(m.CopyVolume(ctx, "default", "vm/v1", "default", "v4"))
	checkChain(t, must[string](t)(m.VolumePath("default", "vm/v4")))
	must[*Pool](t)(m.CreatePool(ctx, PoolConfig{Name: "other", Driver: DriverDir}))
	f := must[*Volume](t)(m.CopyVolume(ctx, "default", "vm/v1", "other", "v5"))
	info, _ = qemuImgInfo(ctx, must[string](t)(m.VolumePath("other", "vm/v5")), "qcow2")
	if c.Base != "f00d.vm" || f.Base != "" || info.Backing != "" || info.VirtualSize != 32<<20 {
		t.Fatalf("copies %+v %+v, flat copy %+v", c, f, info)
	}
	// The image copy goes with its last user.
	for _, n := range []string{"v1", "v2", "v4"} {
		must0(t, m.DeleteInstanceRoot(ctx, "default", n, TypeVM))
		left := exists(dataPath(m.pools["default"].Path, TypeImage, "f00d.vm"))
		if left != (n != "v4") {
			t.Fatalf("after deleting %s the image copy exists: %v", n, left)
		}
	}
}

// checkChain opens a disk with its backing chain, which fails if the base cannot be found.
func checkChain(t *testing.T, disk string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "info", "--backing-chain", disk).CombinedOutput(); err != nil {
		t.Fatalf("backing chain of %s: %v: %s", disk, err, out)
	}
}

func must0(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func must2(t *testing.T) func(string, func() error, error) (string, func() error) {
	return func(s string, f func() error, err error) (string, func() error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s, f
	}
}

// A root one host made on a shared pool can be adopted by the same-named instance of another host;
// it is deleted only when the last host's instance lets go, and a failed create on the second host
// never takes it with it.
func TestSharedRootAdoptedAndKept(t *testing.T) {
	testenv.Require(t, "e2fsprogs")
	a, b, _ := twoHosts(t)
	ctx := testenv.Context(t, 2*time.Minute)
	rootfs := fakeRootfs(t)
	must[*Volume](t)(a.CreateInstanceRoot(ctx, "sh", "c1", TypeContainer, ImageSource{RootfsDir: rootfs}, 16<<20))
	_, err := b.CreateInstanceRoot(ctx, "shared1", "c1", TypeContainer, ImageSource{RootfsDir: rootfs}, 16<<20)
	wantKind(t, err, errdefs.ErrAlreadyExists)
	must0(t, b.DeleteInstanceRoot(ctx, "shared1", "c1", TypeContainer)) // the roll-back of that create
	_, err = b.AdoptInstanceRoot(ctx, "shared1", "c1", TypeVM, false)
	wantKind(t, err, errdefs.ErrNotFound)
	v := must[*Volume](t)(b.AdoptInstanceRoot(ctx, "shared1", "c1", TypeContainer, false))
	if len(v.UsedBy) != 2 || v.UsedBy[1].Host != "host-b" {
		t.Fatalf("adopted root %+v", v.UsedBy)
	}
	must[*Volume](t)(b.AdoptInstanceRoot(ctx, "shared1", "c1", TypeContainer, false)) // again: no change
	must0(t, a.DeleteInstanceRoot(ctx, "sh", "c1", TypeContainer))
	v = must[*Volume](t)(b.GetVolume(ctx, "shared1", "container/c1"))
	if len(v.UsedBy) != 1 || v.UsedBy[0].Host != "host-b" {
		t.Fatalf("after host a let go: %+v", v.UsedBy)
	}
	must0(t, b.DeleteInstanceRoot(ctx, "shared1", "c1", TypeContainer))
	_, err = a.GetVolume(ctx, "sh", "container/c1")
	wantKind(t, err, errdefs.ErrNotFound)

	// A custom volume attached to an instance is no root to adopt.
	must[*Volume](t)(a.CreateVolume(ctx, "sh", VolumeConfig{Name: "c2", Type: TypeContainer, Size: 16 << 20}))
	must0(t, a.Attach(ctx, "sh", "container/c2", "other", false))
	_, err = b.AdoptInstanceRoot(ctx, "shared1", "c2", TypeContainer, false)
	wantKind(t, err, errdefs.ErrConflict, "other")
}

// A root that a live process on this host uses (an orphaned guest whose instance record was lost)
// can be neither taken as another instance's root nor deleted, whatever the records say.
func TestRootHeldByProcessRefused(t *testing.T) {
	m, ctx := defaultPool(t)
	must[*Volume](t)(m.CreateInstanceRoot(ctx, "default", "d1", TypeContainer, ImageSource{RootfsDir: fakeRootfs(t)}, 0))
	info := must[*RootInfo](t)(m.InstanceRoot(ctx, "default", "d1", TypeContainer))
	// A container's init has the tree as its root; a working directory is the same identity check
	// and needs no privilege.
	cmd := exec.Command("sleep", "30")
	cmd.Dir = info.Path
	must0(t, cmd.Start())
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) { // exec'd: named sleep
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid)); strings.TrimSpace(string(comm)) == "sleep" || time.Now().After(deadline) {
			break
		}
	}

	_, err := m.AdoptInstanceRoot(ctx, "default", "d1", TypeContainer, false)
	wantKind(t, err, errdefs.ErrConflict, "container/d1", "(sleep)", "used on this host")
	wantKind(t, m.DeleteInstanceRoot(ctx, "default", "d1", TypeContainer), errdefs.ErrConflict, "(sleep)")
	if _, err := os.Stat(info.Path + "/etc/hostname"); err != nil {
		t.Fatalf("the held root was touched: %v", err)
	}
	// A live move's destination takes it while the source's guest still holds it (both hosts on
	// one machine): the move's lease guards that root, not this check.
	must[*Volume](t)(m.AdoptInstanceRoot(ctx, "default", "d1", TypeContainer, true))
	cmd.Process.Kill()
	cmd.Wait()
	must0(t, m.DeleteInstanceRoot(ctx, "default", "d1", TypeContainer))
	if _, err := os.Stat(info.Path); !os.IsNotExist(err) {
		t.Fatalf("root left after delete: %v", err)
	}
}

// A root whose image copy cannot be made (a full pool, a source that fails) leaves nothing in the
// pool: no record, no data, and no lock file either.
func TestFailedRootCreateLeavesNoLockFile(t *testing.T) {
	m, ctx := defaultPool(t)
	p := must[*Pool](t)(m.GetPool(ctx, "default"))
	src := ImageSource{Fingerprint: "fp1", Prepare: func(context.Context, *ImageSource) (func(), error) {
		return nil, errors.New("no space left on device")
	}}
	_, err := m.CreateInstanceRoot(ctx, "default", "v1", TypeVM, src, 0)
	if err == nil {
		t.Fatal("create from a failing source succeeded")
	}
	var left []string
	filepath.WalkDir(filepath.Join(p.Path, "locks"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, path)
		}
		return nil
	})
	if len(left) > 0 {
		t.Fatalf("a failed create left lock files: %v", left)
	}
}

// A thin VM root is refused on a pool with less free space than the minimum: the guest would fill
// the pool and QEMU would pause it. Nothing is left behind.
func TestVMRootRefusedOnFullPool(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "storage")
	m, err := NewManager(Options{Dir: dir, HostID: "host-a", MinFreeForVM: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := testenv.Context(t, 2*time.Minute)
	p := must[*Pool](t)(m.EnsureDefault(ctx))
	src := ImageSource{Fingerprint: "f00d", BaseDisk: "/nonexistent", BaseFormat: "raw"}
	_, err = m.CreateInstanceRoot(ctx, "default", "v1", TypeVM, src, 0)
	wantKind(t, err, errdefs.ErrUnavailable, `pool "default" has only`, "free space or put the VM on another pool")
	if vols := must[[]Volume](t)(m.ListVolumes(ctx, "default")); len(vols) != 0 {
		t.Fatalf("volumes left: %+v", vols)
	}
	if ents, _ := os.ReadDir(filepath.Join(p.Path, "locks", "image")); len(ents) != 0 {
		t.Fatalf("lock files left: %v", ents)
	}
}
