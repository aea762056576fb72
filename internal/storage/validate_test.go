package storage

import (
	"strings"
	"testing"

	"tandem/internal/errdefs"
)

func TestNames(t *testing.T) {
	for _, ok := range []string{"a", "data1", "my-vol", "v.2", "snap_1", "0", strings.Repeat("a", 80)} {
		if err := ValidateVolumeName("volume", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	bad := map[string]string{"": "empty", "-a": "start with", ".a": "start with", "..": "start with",
		"A": "start with", "a/b": "may only", "a@b": "may only", "a b": "may only", strings.Repeat("a", 81): "81 characters"}
	for in, words := range bad {
		err := ValidateVolumeName("volume", in)
		if err == nil || !strings.Contains(err.Error(), words) {
			t.Errorf("%q: %v, want %q", in, err, words)
		}
		wantKind(t, err, errdefs.ErrInvalidArgument)
	}
	for _, in := range []string{"", "a.b", "a_b", "-x", strings.Repeat("p", 64)} {
		if ValidatePoolName(in) == nil {
			t.Errorf("pool name %q accepted", in)
		}
	}
}

func TestRefs(t *testing.T) {
	for in, want := range map[string]string{"data": "custom/data", "custom/d": "custom/d", "vm/v1": "vm/v1",
		"container/c1": "container/c1", "image/abc.vm": "image/abc.vm"} {
		typ, name, err := parseRef(in)
		if err != nil || typ+"/"+name != want {
			t.Errorf("parseRef(%q) = %s/%s, %v; want %s", in, typ, name, err, want)
		}
	}
	for _, in := range []string{"disk/x", "vm/", "/x", "vm/a/b", "vm/A"} {
		if _, _, err := parseRef(in); err == nil {
			t.Errorf("parseRef(%q) accepted", in)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, words := range map[string]string{"0": "0 is impossible", "1KiB": "too small", "2EiB": "larger than 1EiB",
		"abc": "invalid size", "-1": "invalid"} {
		_, err := ParseSize(in)
		if err == nil || !strings.Contains(err.Error(), words) {
			t.Errorf("ParseSize(%q): %v, want %q", in, err, words)
		}
		wantKind(t, err, errdefs.ErrInvalidArgument)
	}
	if n, err := ParseSize("1GiB"); err != nil || n != 1<<30 {
		t.Errorf("ParseSize(1GiB) = %d, %v", n, err)
	}
	if roundSize(1) != 4096 || roundSize(8192) != 8192 {
		t.Error("roundSize")
	}
}

func TestCreateVolumeRefusals(t *testing.T) {
	m, ctx := defaultPool(t)
	cases := []struct {
		cfg   VolumeConfig
		words string
	}{
		{VolumeConfig{Name: "a"}, "needs a size"},
		{VolumeConfig{Name: "a", ContentType: ContentBlock}, "needs a size"},
		{VolumeConfig{Name: "a", Size: 1 << 50}, "free"}, // a PiB does not fit on a test machine
		{VolumeConfig{Name: "a", Size: MaxSize + 1}, "1EiB"},
		{VolumeConfig{Name: "a", Size: 1024}, "too small"},
		{VolumeConfig{Name: "a", Type: "disk", Size: 1 << 30}, "unknown volume type"},
		{VolumeConfig{Name: "a", ContentType: "fs", Size: 1 << 30}, "unknown content type"},
		{VolumeConfig{Name: "A", Size: 1 << 30}, "start with"},
		{VolumeConfig{Name: "a", Type: TypeImage, Size: 1 << 30}, "image layer"},
	}
	for _, c := range cases {
		_, err := m.CreateVolume(ctx, "default", c.cfg)
		if err == nil {
			t.Fatalf("%+v accepted", c.cfg)
		}
		wantKind(t, err, errdefs.ErrInvalidArgument, c.words)
	}
	_, err := m.CreateVolume(ctx, "nope", VolumeConfig{Name: "a", Size: 1 << 30})
	wantKind(t, err, errdefs.ErrNotFound, `"nope"`)
	if vols, _ := m.ListVolumes(ctx, "default"); len(vols) != 0 {
		t.Fatalf("refused creates left volumes: %+v", vols)
	}
}

func TestPoolConfigRefusals(t *testing.T) {
	m, ctx := defaultPool(t)
	dir := t.TempDir()
	writeFile(t, dir+"/full/x", "x")
	cases := []struct {
		cfg   PoolConfig
		kind  error
		words string
	}{
		{PoolConfig{Name: "p", Driver: "zfs"}, errdefs.ErrInvalidArgument, "unknown pool driver"},
		{PoolConfig{Name: "P", Driver: "dir"}, errdefs.ErrInvalidArgument, "pool name"},
		{PoolConfig{Name: "default", Driver: "dir"}, errdefs.ErrAlreadyExists, "default"},
		{PoolConfig{Name: "p", Driver: "dir", Source: "rel/path"}, errdefs.ErrInvalidArgument, "absolute"},
		{PoolConfig{Name: "p", Driver: "dir", Size: 1 << 30}, errdefs.ErrInvalidArgument, "no size"},
		{PoolConfig{Name: "p", Driver: "dir", Source: dir + "/full"}, errdefs.ErrInvalidArgument, "not empty"},
		{PoolConfig{Name: "p", Driver: "shared"}, errdefs.ErrInvalidArgument, "needs a source"},
		{PoolConfig{Name: "p", Driver: "shared", Source: dir + "/missing"}, errdefs.ErrInvalidArgument, "mount the shared"},
		{PoolConfig{Name: "p", Driver: "btrfs"}, errdefs.ErrInvalidArgument, "source"},
		{PoolConfig{Name: "p", Driver: "btrfs", Source: dir, Size: 1 << 30}, errdefs.ErrInvalidArgument, "not both"},
		{PoolConfig{Name: "p", Driver: "dir", Source: m.dir + "/pools/default/sub"}, errdefs.ErrConflict, "already uses"},
	}
	for _, c := range cases {
		_, err := m.CreatePool(ctx, c.cfg)
		if err == nil {
			t.Fatalf("%+v accepted", c.cfg)
		}
		wantKind(t, err, c.kind, c.words)
	}
	if pools, _ := m.ListPools(ctx); len(pools) != 1 {
		t.Fatalf("refused creates left pools: %+v", pools)
	}
	if readFile(t, dir+"/full/x") != "x" {
		t.Fatal("a refused pool touched its source")
	}
}
