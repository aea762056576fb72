package container

import "testing"

func TestStripControl(t *testing.T) {
	in := "\x1b[0;1;31mFailed to create /init.scope control group: Read-only file system\x1b[0m\r\n[\x1b[0;1;31m!!!!!!\x1b[0m] Failed\x07 to allocate\tmanager\n"
	want := "Failed to create /init.scope control group: Read-only file system\n[!!!!!!] Failed to allocate\tmanager\n"
	if got := stripControl(in); got != want {
		t.Errorf("stripControl = %q, want %q", got, want)
	}
}
