package fsutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Holder is something on this host that keeps a file or tree in use: a process (its root or working
// directory is the tree, or it has the file open) or a loop device backed by the file.
type Holder struct {
	PID  int    // 0 for a loop device
	Comm string // the process's name, or the loop device
	How  string // "root", "cwd", "open", "loop"
}

func (h Holder) String() string {
	if h.PID == 0 {
		return h.Comm + " is backed by it"
	}
	switch h.How {
	case "root":
		return fmt.Sprintf("pid %d (%s) runs with it as its root", h.PID, h.Comm)
	case "cwd":
		return fmt.Sprintf("pid %d (%s) works in it", h.PID, h.Comm)
	}
	return fmt.Sprintf("pid %d (%s) has it open", h.PID, h.Comm)
}

// DescribeHolders joins holders for an error message, naming at most three.
func DescribeHolders(hs []Holder) string {
	var s []string
	for i, h := range hs {
		if i == 3 {
			s = append(s, fmt.Sprintf("and %d more", len(hs)-3))
			break
		}
		s = append(s, h.String())
	}
	return strings.Join(s, "; ")
}

// Holders finds what on this host uses path, by identity (device and inode), so bind mounts and
// symlinks do not hide it: for a directory, live processes whose root or working directory it is
// (a container's init after pivot_root); for a file, processes that have it open (QEMU) and loop
// devices backed by it (a mounted image). The calling process is left out. A path that does not
// exist has no holders.
func Holders(path string) ([]Holder, error) {
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	dir := want.Mode&unix.S_IFMT == unix.S_IFDIR
	same := func(p string) bool {
		var st unix.Stat_t
		return unix.Stat(p, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var out []Holder
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		how := ""
		if dir {
			switch {
			case same(base + "/root"):
				how = "root"
			case same(base + "/cwd"):
				how = "cwd"
			}
		} else if opensFile(base, same) {
			how = "open"
		}
		if how != "" {
			out = append(out, Holder{PID: pid, Comm: comm(base), How: how})
		}
	}
	if !dir {
		out = append(out, loopHolders(same)...)
	}
	return out, nil
}

func opensFile(procDir string, same func(string) bool) bool {
	fds, err := os.ReadDir(procDir + "/fd")
	if err != nil {
		return false // gone, or a kernel thread
	}
	for _, fd := range fds {
		if same(procDir + "/fd/" + fd.Name()) {
			return true
		}
	}
	return false
}

func comm(procDir string) string {
	b, err := os.ReadFile(procDir + "/comm")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// loopHolders lists loop devices whose backing file is the one same matches.
func loopHolders(same func(string) bool) []Holder {
	devs, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []Holder
	for _, f := range devs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if same(backing) {
			out = append(out, Holder{Comm: "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f))), How: "loop"})
		}
	}
	return out
}
