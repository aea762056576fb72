package agent

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FindPort returns the device of the virtio-serial port called name. udev makes
// /dev/virtio-ports/NAME; minimal guests have no udev, so sysfs is searched too.
func FindPort(name string) (string, error) {
	if p := "/dev/virtio-ports/" + name; exists(p) {
		return p, nil
	}
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(filepath.Dir(n)), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port %q (is virtio_console loaded?)", name)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// EnsureDevpts mounts /dev/pts if the image's init has not: exec with a terminal needs it.
func EnsureDevpts() error {
	if exists("/dev/pts/ptmx") {
		return nil
	}
	os.MkdirAll("/dev/pts", 0o755)
	return unix.Mount("devpts", "/dev/pts", "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")
}

// Linux input event constants (linux/input-event-codes.h).
const (
	evKey       = 1
	keyPower    = 116
	inputEvSize = 24 // struct input_event on 64-bit: timeval (16), type, code (2 each), value (4)
)

// WatchPowerButton finds the ACPI "Power Button" input devices (the button and evdev modules make
// them) and calls onPress on the first press. QEMU's system_powerdown only raises that button: an
// init without acpid or logind would otherwise never hear it. It keeps looking for devices for
// a minute, as the modules may still be probing.
func WatchPowerButton(onPress func()) {
	pressed := make(chan struct{}, 1)
	watched := map[string]bool{}
	for i := 0; i < 30; i++ {
		devs, _ := filepath.Glob("/dev/input/event*")
		for _, d := range devs {
			if watched[d] || inputName(d) != "Power Button" {
				continue
			}
			watched[d] = true
			go watchKey(d, pressed)
		}
		if len(watched) > 0 {
			break
		}
		time.Sleep(2 * time.Second)
	}
	if len(watched) == 0 {
		return
	}
	<-pressed
	onPress()
}

func inputName(dev string) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 256)
	// EVIOCGNAME(len) = _IOC(_IOC_READ, 'E', 0x06, len)
	req := uintptr(2<<30 | len(buf)<<16 | 'E'<<8 | 0x06)
	n, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), req, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 || int(n) <= 0 {
		return ""
	}
	return strings.TrimRight(string(buf[:n]), "\x00")
}

func watchKey(dev string, pressed chan<- struct{}) {
	f, err := os.Open(dev)
	if err != nil {
		return
	}
	defer f.Close()
	ev := make([]byte, inputEvSize)
	for {
		if _, err := readFull(f, ev); err != nil {
			return
		}
		typ := binary.LittleEndian.Uint16(ev[16:])
		code := binary.LittleEndian.Uint16(ev[18:])
		value := int32(binary.LittleEndian.Uint32(ev[20:]))
		if typ == evKey && code == keyPower && value == 1 {
			select {
			case pressed <- struct{}{}:
			default:
			}
		}
	}
}

func readFull(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

// PowerOff asks the guest's init to power off: `poweroff` (busybox signals init with SIGUSR2),
// or SIGUSR2 to PID 1 directly if there is no such command.
func PowerOff() error {
	for _, p := range []string{"/sbin/poweroff", "/bin/poweroff", "/usr/sbin/poweroff", "/usr/bin/poweroff"} {
		if exists(p) {
			return exec.Command(p).Run()
		}
	}
	return syscall.Kill(1, syscall.SIGUSR2)
}

// Console writes a line to the guest's console, where the host's console log records it.
func Console(format string, args ...any) {
	f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, format+"\n", args...)
}

// ProcessRunning says whether a process whose command name is name runs (an acpid that will act
// on the power button itself, say).
func ProcessRunning(name string) bool {
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && strings.TrimSpace(string(b)) == name {
			return true
		}
	}
	return false
}
