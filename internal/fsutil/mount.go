package fsutil

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MountedAt tells whether something is mounted exactly at path.
func MountedAt(path string) bool {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			n := (s[i+1]-'0')*64 + (s[i+2]-'0')*8 + (s[i+3] - '0')
			b.WriteByte(n)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// LoopMount mounts the ext4 image at the directory at (made if missing) through a loop device
// that the kernel frees with the mount (mount -o loop sets autoclear).
func LoopMount(ctx context.Context, image, at string, readonly bool) error {
	if err := os.MkdirAll(at, 0o711); err != nil {
		return err
	}
	opts := "loop"
	if readonly {
		opts += ",ro"
	}
	out, err := exec.CommandContext(ctx, "mount", "-t", "ext4", "-o", opts, image, at).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mount %s at %s: %v: %s", image, at, err, bytes.TrimSpace(out))
	}
	return nil
}

// Unmount unmounts whatever is mounted at path (nothing is fine). A mount still busy after a few
// tries is an error: detaching it lazily would leave the disk in use after the caller moved on.
func Unmount(path string) error {
	var err error
	for i := 0; i < 10 && MountedAt(path); i++ {
		if err = unix.Unmount(path, 0); err == nil || err == unix.EINVAL || err == unix.ENOENT {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if MountedAt(path) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	return nil
}
