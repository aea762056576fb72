package shim

import (
	"os"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel ABI structs must have the sizes the ioctls encode.
func TestNotifStructSizes(t *testing.T) {
	if s := unsafe.Sizeof(seccompNotif{}); s != 80 {
		t.Errorf("seccomp_notif is %d bytes, want 80", s)
	}
	if s := unsafe.Sizeof(seccompNotifResp{}); s != 24 {
		t.Errorf("seccomp_notif_resp is %d bytes, want 24", s)
	}
}

func TestContainerSysinfoOfSelf(t *testing.T) {
	var host unix.Sysinfo_t
	unix.Sysinfo(&host)
	si, err := containerSysinfo(os.Getpid(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if si.Totalram == 0 || si.Totalram > host.Totalram || si.Uptime > host.Uptime {
		t.Errorf("sysinfo %+v, host %+v", si, host)
	}
	if start, err := startSeconds(os.Getpid()); err != nil || start > host.Uptime {
		t.Errorf("start %d %v", start, err)
	}
}

func TestRuncOp(t *testing.T) {
	if got := runcOp([]string{"/usr/sbin/runc", "--root", "x", "restore", "--detach"}); got != "restore" {
		t.Error(got)
	}
	if got := oneLine("a\nb\n"); strings.Contains(got, "\n") {
		t.Error(got)
	}
}
