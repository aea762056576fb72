package main

import (
	"os"
	"path/filepath"
	"testing"
)

// file pull into an existing directory puts the file inside it, as cp does; into a new name, it
// makes that file; nothing .partial is left.
func TestFilePullIntoDirectory(t *testing.T) {
	_, dir := startFake(t)
	out := t.TempDir()
	for _, c := range []struct{ local, want string }{
		{out, filepath.Join(out, "hostname")},
		{out + "/", filepath.Join(out, "hostname")},
		{filepath.Join(out, "renamed"), filepath.Join(out, "renamed")},
	} {
		os.Remove(c.want)
		if r := cli(t, dir, false, "file", "pull", "c1/etc/hostname", c.local); r.code != 0 {
			t.Fatalf("pull into %s: code %d %s", c.local, r.code, r.stderr)
		}
		if got, err := os.ReadFile(c.want); err != nil || string(got) != "c1:/etc/hostname\n" {
			t.Fatalf("pull into %s: %s holds %q, %v", c.local, c.want, got, err)
		}
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != 2 {
		t.Fatalf("left in %s: %v", out, entries)
	}
	if r := cli(t, dir, false, "file", "pull", "c1/etc/hostname", filepath.Join(out, "nodir")+"/"); r.code == 0 {
		t.Fatal("pull into a directory that does not exist succeeded")
	}
}
