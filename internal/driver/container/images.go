package container

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// prepareImages makes a checkpoint restorable into a user namespace. CRIU's restored root task
// reads images from inside the container's new user namespace, where only files of the
// container's root (hostRoot) are open to it, and it reads timens-0.img before its parent has
// written the namespace's id map, when it is nobody: that file (clock offsets only) and the
// directory's search bit are for others. Without this CRIU fails, sometimes, with "Unable to open
// timens-0.img: Permission denied". Memory images stay 0600.
func prepareImages(dir string, hostRoot int) error {
	err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, hostRoot, hostRoot); err != nil {
			return err
		}
		mode := os.FileMode(0o600)
		switch {
		case de.IsDir():
			mode = 0o711
		case strings.HasPrefix(de.Name(), "timens-"):
			mode = 0o644
		}
		return os.Chmod(path, mode)
	})
	return err
}

// retUserNotif and retAllow are the seccomp BPF "ret" instructions (code BPF_RET|BPF_K = 0x06,
// jt 0, jf 0, k = the action) for SECCOMP_RET_USER_NOTIF and SECCOMP_RET_ALLOW, little-endian.
var (
	retUserNotif = []byte{0x06, 0, 0, 0, 0x00, 0x00, 0xc0, 0x7f}
	retAllow     = []byte{0x06, 0, 0, 0, 0x00, 0x00, 0xff, 0x7f}
)

// disarmNotify rewrites a CRIU seccomp image so that the filters' user-notification returns
// (sysinfo, which the shim answers) become "allow". CRIU restores filters without their
// listener, and a notification with no listener fails the syscall with ENOSYS: restored
// processes would get garbage from free and uptime. Disarmed, they get the kernel's (host)
// sysinfo; processes exec'd after the restore get a listening filter again. The instruction has
// a fixed 8-byte encoding, so it is patched in place inside the protobuf.
func disarmNotify(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !bytes.Contains(data, retUserNotif) {
		return nil
	}
	data = bytes.ReplaceAll(data, retUserNotif, retAllow)
	return os.WriteFile(path, data, 0o600)
}

var criuErrorRE = regexp.MustCompile(`Error \(([^)]*)\): (.*)`)

// criuErrors returns the Error lines of a CRIU log, the part of a failure runc does not show.
func criuErrors(logPath string) string {
	data, err := os.ReadFile(logPath)
	if errors.Is(err, os.ErrNotExist) || err != nil {
		return ""
	}
	var msgs []string
	for _, line := range strings.Split(string(data), "\n") {
		if m := criuErrorRE.FindStringSubmatch(line); m != nil && !strings.Contains(m[2], "RLIMIT_NOFILE") {
			msgs = append(msgs, m[1]+": "+strings.TrimSpace(m[2]))
		}
	}
	if len(msgs) > 5 {
		msgs = msgs[len(msgs)-5:]
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (criu: " + strings.Join(msgs, "; ") + ")"
}

// lastLogLine is the last line of a log, where a hung CRIU stopped ("" for none).
func lastLogLine(logPath string) string {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// criuLastLine is lastLogLine for an error message: " (criu log ends: …)", or "".
func criuLastLine(logPath string) string {
	if last := lastLogLine(logPath); last != "" {
		return " (criu log ends: " + last + ")"
	}
	return ""
}

// criuLogSummary is criuErrors, or the log's last line when CRIU logged no error (it hung).
func criuLogSummary(logPath string) string {
	if s := criuErrors(logPath); s != "" {
		return s
	}
	return criuLastLine(logPath)
}
