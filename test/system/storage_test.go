package system

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tandem/internal/errdefs"
	"tandem/internal/storage"
	"tandem/internal/testenv"
)

// TestStorage drives internal/storage against real btrfs, ext4 and loop devices. It needs root and
// leaves no mount or loop device behind (checked at the end).
func TestStorage(t *testing.T) {
	testenv.Require(t, "root", "btrfs-progs", "e2fsprogs", "losetup", "qemu-img", "btrfs-module")
	start := time.Now()
	root, err := os.MkdirTemp("", "tandem-storage-")
	if err != nil {
		t.Fatal(err)
	}
	st := &storTest{root: root}
	t.Cleanup(func() { st.cleanup(t) })
	ctx := testenv.Context(t, 5*time.Minute)
	st.ctx = ctx
	st.m = st.manager(t, "a", "host-a")
	st.rootfs = st.makeRootfs(t, "rootfs", 48<<20)
	for _, s := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"BtrfsCloneSharesBlocks", st.btrfsClone},
		{"BtrfsQuotaStopsWriter", st.btrfsQuota},
		{"BtrfsRemountAfterReboot", st.btrfsRemount},
		{"FullBtrfsPool", st.fullBtrfs},
		{"FullDirPool", st.fullDir},
		{"SharedExt4Volume", st.sharedExt4},
		{"SharedTwoHosts", st.sharedTwoHosts},
	} {
		sstart := time.Now()
		ok := t.Run(s.name, s.fn)
		t.Logf("%s: %v in %s", s.name, map[bool]string{true: "ok", false: "FAILED"}[ok], time.Since(sstart).Round(time.Millisecond))
		if !ok {
			break // later steps use what earlier ones made
		}
	}
	t.Logf("storage system test took %s", time.Since(start).Round(time.Millisecond))
}

type storTest struct {
	root   string
	ctx    context.Context
	m      *storage.Manager
	rootfs string
	mounts []string // mounts the test itself made
}

func (st *storTest) manager(t *testing.T, dir, host string) *storage.Manager {
	m, err := storage.NewManager(storage.Options{Dir: filepath.Join(st.root, dir), HostID: host, LeaseTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// makeRootfs writes a tree with size bytes of incompressible data.
func (st *storTest) makeRootfs(t *testing.T, name string, size int) string {
	dir := filepath.Join(st.root, name)
	os.MkdirAll(dir+"/etc", 0o755)
	os.WriteFile(dir+"/etc/hostname", []byte("image\n"), 0o644)
	buf := make([]byte, 1<<20)
	for i := 0; i < size>>20; i++ {
		rand.Read(buf)
		if err := os.WriteFile(filepath.Join(dir, "blob"+strconv.Itoa(i)), buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (st *storTest) btrfsClone(t *testing.T) {
	ctx, m := st.ctx, st.m
	p, err := m.CreatePool(ctx, storage.PoolConfig{Name: "bt", Driver: storage.DriverBtrfs, Size: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	src := storage.ImageSource{Fingerprint: "img1", RootfsDir: st.rootfs}
	t0 := time.Now()
	if _, err := m.CreateInstanceRoot(ctx, "bt", "c1", storage.TypeContainer, src, 0); err != nil {
		t.Fatal(err)
	}
	first := time.Since(t0)
	t0 = time.Now()
	v, err := m.CreateInstanceRoot(ctx, "bt", "c2", storage.TypeContainer, src, 0)
	if err != nil {
		t.Fatal(err)
	}
	clone := time.Since(t0)
	t.Logf("first root (image copied into the pool) %s, clone %s", first.Round(time.Millisecond), clone.Round(time.Millisecond))
	if v.Format != storage.FormatSubvol || v.Base != "img1" || clone > time.Second || clone > first/2 {
		t.Fatalf("clone %+v took %s (first %s)", v, clone, first)
	}
	total, excl := storBtrfsDU(t, filepath.Join(p.Path, "volumes/container/c2"))
	t.Logf("clone: %d bytes referenced, %d exclusive", total, excl)
	if total < 48<<20 || excl > 1<<20 {
		t.Fatalf("clone does not share its blocks: total %d, exclusive %d", total, excl)
	}
	dir, unmount, err := m.MountVolume(ctx, "bt", "container/c2")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dir + "/etc/hostname"); string(b) != "image\n" {
		t.Fatalf("clone content %q", b)
	}
	unmount()
	// Snapshot, change, restore on a subvolume.
	storOK(t, m.SnapshotVolume(ctx, "bt", "container/c2", "s1"))
	os.WriteFile(dir+"/etc/hostname", []byte("changed\n"), 0o644)
	storOK(t, m.RestoreVolume(ctx, "bt", "container/c2", "s1"))
	if b, _ := os.ReadFile(dir + "/etc/hostname"); string(b) != "image\n" {
		t.Fatalf("after restore %q", b)
	}
}

// btrfsDU reads total and exclusive bytes of a path from btrfs filesystem du.
func storBtrfsDU(t *testing.T, path string) (total, excl uint64) {
	exec.Command("btrfs", "filesystem", "sync", path).Run()
	out, err := exec.Command("btrfs", "filesystem", "du", "-s", "--raw", path).CombinedOutput()
	if err != nil {
		t.Fatalf("btrfs filesystem du: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	total, _ = strconv.ParseUint(f[0], 10, 64)
	excl, _ = strconv.ParseUint(f[1], 10, 64)
	return total, excl
}

func (st *storTest) btrfsQuota(t *testing.T) {
	ctx, m := st.ctx, st.m
	const limit = 96 << 20
	if _, err := m.CreateInstanceRoot(ctx, "bt", "c3", storage.TypeContainer,
		storage.ImageSource{Fingerprint: "img1", RootfsDir: st.rootfs}, 16<<20); err == nil {
		t.Fatal("a limit smaller than the image was accepted")
	}
	if _, err := m.CreateInstanceRoot(ctx, "bt", "c3", storage.TypeContainer,
		storage.ImageSource{Fingerprint: "img1", RootfsDir: st.rootfs}, limit); err != nil {
		t.Fatal(err)
	}
	dir, unmount, err := m.MountVolume(ctx, "bt", "container/c3")
	if err != nil {
		t.Fatal(err)
	}
	defer unmount()
	written, werr := storFill(dir+"/fill", 512<<20)
	t.Logf("writer stopped after %d MiB: %v", written>>20, werr)
	if !errors.Is(werr, syscall.EDQUOT) && !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("writer was not stopped by the quota: wrote %d bytes, %v", written, werr)
	}
	if written > limit {
		t.Fatalf("wrote %d bytes past a %d limit", written, limit)
	}
	// Growing the limit lets it write again.
	os.Remove(dir + "/fill")
	storOK(t, m.ResizeVolume(ctx, "bt", "container/c3", 256<<20))
	if n, err := storFill(dir+"/fill2", 120<<20); err != nil || n != 120<<20 {
		t.Fatalf("after growing the quota: wrote %d, %v", n, err)
	}
}

// fillUntilFull writes 1 MiB chunks (synced, so quota accounting keeps up) until max or an error.
func storFill(path string, max int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	var n int64
	for n < max {
		w, err := f.Write(buf)
		n += int64(w)
		if err == nil && n%(8<<20) == 0 {
			err = f.Sync()
		}
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}

// After a reboot the loop file is not mounted: the pool is unavailable until Recover.
func (st *storTest) btrfsRemount(t *testing.T) {
	ctx, m := st.ctx, st.m
	p, _ := m.GetPool(ctx, "bt")
	if out, err := exec.Command("umount", p.Path).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	m2 := st.manager(t, "a", "host-a") // the daemon after the reboot
	if p2, _ := m2.GetPool(ctx, "bt"); !strings.HasPrefix(p2.Status, "unavailable") {
		t.Fatalf("unmounted pool status %q", p2.Status)
	}
	_, err := m2.ListVolumes(ctx, "bt")
	storWantKind(t, err, errdefs.ErrUnavailable, "Recover")
	storOK(t, m2.Recover(ctx))
	storOK(t, m2.Recover(ctx))
	if vols, err := m2.ListVolumes(ctx, "bt"); err != nil || len(vols) != 4 { // image/img1, c1, c2, c3
		t.Fatalf("after Recover: %d volumes, %v", len(vols), err)
	}
	for _, c := range []string{"c1", "c2", "c3"} {
		storOK(t, m2.DeleteInstanceRoot(ctx, "bt", c, storage.TypeContainer))
	}
	storOK(t, m2.DeletePool(ctx, "bt")) // the unused image copy goes with it
	if _, err := os.Stat(p.LoopFile); err == nil {
		t.Fatal("the pool's loop file survived its delete")
	}
	st.m = m2
}

func (st *storTest) fullBtrfs(t *testing.T) {
	ctx, m := st.ctx, st.m
	p, err := m.CreatePool(ctx, storage.PoolConfig{Name: "tiny", Driver: storage.DriverBtrfs, Size: 128 << 20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.CreateVolume(ctx, "tiny", storage.VolumeConfig{Name: "big", Size: 1 << 30})
	storWantKind(t, err, errdefs.ErrInvalidArgument, `pool "tiny" has`, "does not fit")
	t.Logf("volume create on a full pool: %v", err)
	big := st.makeRootfs(t, "rootfs-big", 160<<20)
	_, err = m.CreateInstanceRoot(ctx, "tiny", "c1", storage.TypeContainer, storage.ImageSource{Fingerprint: "big", RootfsDir: big}, 0)
	if err == nil || !strings.Contains(err.Error(), "tiny") {
		t.Fatalf("a root larger than the pool: %v", err)
	}
	t.Logf("root create on a full pool: %v", err)
	st.assertEmptyPool(t, "tiny", p.Path)
	out, _ := exec.Command("btrfs", "subvolume", "list", p.Path).CombinedOutput()
	if strings.TrimSpace(string(out)) != "" {
		t.Fatalf("subvolumes left: %s", out)
	}
	storOK(t, m.DeletePool(ctx, "tiny"))
}

// A dir pool on a 64 MiB ext4 loop: a copy that runs out of space is rolled back.
func (st *storTest) fullDir(t *testing.T) {
	ctx, m := st.ctx, st.m
	img, mnt := filepath.Join(st.root, "small.ext4"), filepath.Join(st.root, "small")
	os.MkdirAll(mnt, 0o755)
	if out, err := exec.Command("truncate", "-s", "64M", img).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, c := range [][]string{{"mkfs.ext4", "-q", "-F", img}, {"mount", "-o", "loop", img, mnt}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", c, err, out)
		}
	}
	st.mounts = append(st.mounts, mnt)
	src := filepath.Join(mnt, "pool")
	if _, err := m.CreatePool(ctx, storage.PoolConfig{Name: "small", Driver: storage.DriverDir, Source: src}); err != nil {
		t.Fatal(err)
	}
	_, err := m.CreateVolume(ctx, "small", storage.VolumeConfig{Name: "b", ContentType: storage.ContentBlock, Size: 1 << 30})
	storWantKind(t, err, errdefs.ErrInvalidArgument, "does not fit")
	_, err = m.CreateInstanceRoot(ctx, "small", "c1", storage.TypeContainer, storage.ImageSource{RootfsDir: st.rootfs + "/../rootfs-big"}, 0)
	storWantKind(t, err, errdefs.ErrConflict, `pool "small" is out of space`, "rolled back")
	t.Logf("copy into a full dir pool: %v", err)
	st.assertEmptyPool(t, "small", src)
	// The pool still works.
	if _, err := m.CreateInstanceRoot(ctx, "small", "c2", storage.TypeContainer, storage.ImageSource{RootfsDir: st.makeRootfs(t, "rootfs-small", 4<<20)}, 0); err != nil {
		t.Fatal(err)
	}
	storOK(t, m.DeleteInstanceRoot(ctx, "small", "c2", storage.TypeContainer))
	storOK(t, m.DeletePool(ctx, "small"))
}

func (st *storTest) assertEmptyPool(t *testing.T, pool, path string) {
	if vols, err := st.m.ListVolumes(st.ctx, pool); err != nil || len(vols) != 0 {
		t.Fatalf("volumes left after a failed create: %+v %v", vols, err)
	}
	for _, pat := range []string{"volumes/*/*", "meta/*/*", "snapshots/*/*", "tmp/*"} {
		if left, _ := filepath.Glob(filepath.Join(path, pat)); len(left) != 0 {
			t.Fatalf("half-made files left: %v", left)
		}
	}
}

func (st *storTest) sharedExt4(t *testing.T) {
	ctx, m := st.ctx, st.m
	shared := filepath.Join(st.root, "shared")
	os.MkdirAll(shared, 0o755)
	if _, err := m.CreatePool(ctx, storage.PoolConfig{Name: "sh", Driver: storage.DriverShared, Source: shared}); err != nil {
		t.Fatal(err)
	}
	v, err := m.CreateVolume(ctx, "sh", storage.VolumeConfig{Name: "data", Size: 32 << 20})
	if err != nil || v.Format != storage.FormatExt4 {
		t.Fatalf("%+v %v", v, err)
	}
	release, err := m.Acquire(ctx, "sh", "data", "c1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	dir, unmount, err := m.MountVolume(ctx, "sh", "data")
	if err != nil {
		t.Fatal(err)
	}
	storOK(t, os.WriteFile(dir+"/f", []byte("one"), 0o644))
	before := storFSTotal(t, dir)
	if err := m.ResizeVolume(ctx, "sh", "data", 64<<20); err != nil { // online: the volume is mounted
		// Online ext4 growth needs CAP_SYS_RESOURCE, which some sandboxes drop: grow offline.
		storWantKind(t, err, errdefs.ErrUnavailable, "CAP_SYS_RESOURCE")
		t.Logf("online grow refused here (%v): growing offline", err)
		storOK(t, unmount())
		storOK(t, m.ResizeVolume(ctx, "sh", "data", 64<<20))
		if dir, unmount, err = m.MountVolume(ctx, "sh", "data"); err != nil {
			t.Fatal(err)
		}
	}
	after := storFSTotal(t, dir)
	t.Logf("filesystem size %d MiB -> %d MiB", before>>20, after>>20)
	if after < before+24<<20 {
		t.Fatalf("grow not seen: %d -> %d", before, after)
	}
	if n, err := storFill(dir+"/fill", 40<<20); err != nil || n != 40<<20 {
		t.Fatalf("writes after the grow: %d, %v", n, err)
	}
	os.Remove(dir + "/fill")
	storOK(t, m.SnapshotVolume(ctx, "sh", "data", "s1"))
	storOK(t, os.WriteFile(dir+"/f", []byte("two"), 0o644))
	storWantKind(t, m.RestoreVolume(ctx, "sh", "data", "s1"), errdefs.ErrConflict, "in use")
	storOK(t, unmount())
	storOK(t, release())
	storOK(t, m.RestoreVolume(ctx, "sh", "data", "s1"))
	dir, unmount, err = m.MountVolume(ctx, "sh", "data")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dir + "/f"); string(b) != "one" {
		t.Fatalf("after restore: %q", b)
	}
	storOK(t, unmount())
	// A container root on a shared pool is an ext4 image filled from the rootfs.
	r, err := m.CreateInstanceRoot(ctx, "sh", "c1", storage.TypeContainer, storage.ImageSource{RootfsDir: st.rootfs}, 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	dir, unmount, err = m.MountVolume(ctx, "sh", "container/c1")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dir + "/etc/hostname"); string(b) != "image\n" || r.Format != storage.FormatExt4 {
		t.Fatalf("shared root %+v: %q", r, b)
	}
	storOK(t, unmount())
}

func storFSTotal(t *testing.T, dir string) uint64 {
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		t.Fatal(err)
	}
	return s.Blocks * uint64(s.Bsize)
}

// A second daemon on the same shared path cannot use a disk the first holds.
func (st *storTest) sharedTwoHosts(t *testing.T) {
	ctx, a := st.ctx, st.m
	b := st.manager(t, "b", "host-b")
	defer b.Close()
	if _, err := b.CreatePool(ctx, storage.PoolConfig{Name: "sh", Driver: storage.DriverShared, Source: filepath.Join(st.root, "shared")}); err != nil {
		t.Fatal(err)
	}
	relA, err := a.Acquire(ctx, "sh", "container/c1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Acquire(ctx, "sh", "container/c1", "c1")
	storWantKind(t, err, errdefs.ErrConflict, "in use by c1 on host host-a")
	storOK(t, relA())
	relB, err := b.Acquire(ctx, "sh", "container/c1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	dir, unmount, err := b.MountVolume(ctx, "sh", "container/c1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(dir + "/etc/hostname")
	storOK(t, errors.Join(err, unmount(), relB()))
	storOK(t, b.DeletePool(ctx, "sh")) // host b leaves; the pool stays for host a
	storOK(t, a.DeleteInstanceRoot(ctx, "sh", "c1", storage.TypeContainer))
	storOK(t, a.DeleteVolume(ctx, "sh", "data"))
	storOK(t, a.DeletePool(ctx, "sh"))
}

// cleanup unmounts whatever is left under the test root and checks nothing leaked.
func (st *storTest) cleanup(t *testing.T) {
	if st.m != nil {
		st.m.Close()
	}
	leftovers := func() []string {
		var out []string
		mounts, _ := os.ReadFile("/proc/mounts")
		for _, l := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], st.root) {
				out = append(out, f[1])
			}
		}
		return out
	}
	// The test's own mounts (the small pool's ext4): lazily if something still holds them under load,
	// so that their autoclear loop devices go too.
	for _, mnt := range st.mounts {
		if exec.Command("umount", mnt).Run() != nil {
			exec.Command("umount", "-l", mnt).Run()
		}
	}
	leaked := leftovers()
	for i := len(leaked) - 1; i >= 0; i-- {
		exec.Command("umount", "-l", leaked[i]).Run()
	}
	var loops string // loop devices with autoclear go away shortly after their umount
	for i := 0; i < 50 && (i == 0 || loops != ""); i++ {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		out, _ := exec.Command("losetup", "-a").CombinedOutput()
		loops = storLoopsUnder(string(out), st.root)
	}
	report := t.Errorf
	if t.Failed() { // a step that failed half way leaves its pools; clean up without blaming storage
		report = t.Logf
	}
	if len(leaked) > 0 {
		report("the storage layer left mounts: %v", leaked)
	}
	if loops != "" {
		report("loop devices left: %s", loops)
		for _, l := range strings.Split(loops, "\n") {
			exec.Command("losetup", "-d", strings.TrimSuffix(strings.Fields(l)[0], ":")).Run()
		}
	}
	os.RemoveAll(st.root)
}

func storLoopsUnder(losetup, root string) string {
	var out []string
	for _, l := range strings.Split(losetup, "\n") {
		if strings.Contains(l, root) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func storOK(t *testing.T, err error) {
	if t.Helper(); err != nil {
		t.Fatal(err)
	}
}

func storWantKind(t *testing.T, err, kind error, words ...string) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v: want kind %v", err, kind)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not mention %q", err, w)
		}
	}
}

func storRead(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
