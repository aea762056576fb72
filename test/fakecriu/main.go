// Command fakecriu stands in for criu in tests. It hangs in dumps the way criu does on hosts
// where compel's breakpoint never traps (internal/driver/container/MIGRATION.md): the
// container's cgroup frozen, its init seized by ptrace, and no end. Everything else, and dumps
// past the configured number of hangs, goes to the real criu.
//
// Its configuration is the JSON file named by $TANDEM_FAKE_CRIU, else <its own path>.json.
package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

type config struct {
	Real string `json:"real"` // the real criu
	// Hangs is how many dumps hang (-1: all); SwrkOnly hangs only the dumps runc asks for, not
	// a `criu dump` run directly (as the driver's probe does).
	Hangs    int  `json:"hangs"`
	SwrkOnly bool `json:"swrk_only"`
	// After runs the real dump to its end first, then hangs (a criu that never exits after it
	// wrote every image and ended the tasks).
	After bool `json:"after"`
	// Log gets a line per call, "<what> CRIU_FAULT=<value>"; "hang" lines count the hangs.
	Log string `json:"log"`
}

// criu's RPC request types (images/rpc.proto).
const reqDump = 1

func main() {
	path := os.Getenv("TANDEM_FAKE_CRIU")
	if path == "" {
		exe, _ := os.Executable()
		path = exe + ".json"
	}
	var c config
	data, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(data, &c)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakecriu: config %s: %v\n", path, err)
		os.Exit(1)
	}
	pid, dump := 0, false
	switch {
	case len(os.Args) > 1 && os.Args[1] == "swrk":
		pid, dump = peekSwrkDump()
	case len(os.Args) > 1 && os.Args[1] == "dump" && !c.SwrkOnly:
		dump = true
		for i, a := range os.Args {
			if (a == "-t" || a == "--tree") && i+1 < len(os.Args) {
				pid, _ = strconv.Atoi(os.Args[i+1])
			}
		}
	}
	if dump && pid > 0 && takeHang(c) {
		if c.After {
			real := exec.Command(c.Real, os.Args[1:]...)
			real.Stdin, real.Stdout, real.Stderr = os.Stdin, os.Stdout, os.Stderr
			real.ExtraFiles = []*os.File{os.NewFile(3, "swrk")} // runc's socket, when it has one
			real.Run()
			for {
				time.Sleep(time.Hour) // (select{} with nothing else running is a deadlock exit)
			}
		}
		hang(pid)
	}
	logCall(c.Log, strings.Join(os.Args[1:], " "))
	if err := syscall.Exec(c.Real, append([]string{c.Real}, os.Args[1:]...), os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "fakecriu: exec %s: %v\n", c.Real, err)
		os.Exit(1)
	}
}

// peekSwrkDump looks at runc's request on fd 3 without taking it: a dump, and of which pid?
func peekSwrkDump() (pid int, dump bool) {
	buf := make([]byte, 1<<16)
	n, _, err := unix.Recvfrom(3, buf, unix.MSG_PEEK)
	if err != nil {
		return 0, false
	}
	var typ uint64
	var opts []byte
	fields(buf[:n], func(num int, v uint64, b []byte) {
		switch num {
		case 1:
			typ = v
		case 2:
			opts = b
		}
	})
	fields(opts, func(num int, v uint64, _ []byte) {
		if num == 2 {
			pid = int(v)
		}
	})
	return pid, typ == reqDump
}

// fields walks a protobuf message's top-level fields: varints as v, length-delimited as b.
func fields(msg []byte, f func(num int, v uint64, b []byte)) {
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return
		}
		msg = msg[n:]
		num := int(key >> 3)
		switch key & 7 {
		case 0:
			v, n := binary.Uvarint(msg)
			if n <= 0 {
				return
			}
			f(num, v, nil)
			msg = msg[n:]
		case 2:
			l, n := binary.Uvarint(msg)
			if n <= 0 || uint64(len(msg)-n) < l {
				return
			}
			f(num, 0, msg[n:n+int(l)])
			msg = msg[n+int(l):]
		case 1:
			msg = msg[min(8, len(msg)):]
		case 5:
			msg = msg[min(4, len(msg)):]
		default:
			return
		}
	}
}

// takeHang reports whether this dump is one of the configured hangs, and logs it if so.
func takeHang(c config) bool {
	if c.Hangs == 0 {
		return false
	}
	if c.Hangs > 0 {
		data, _ := os.ReadFile(c.Log)
		if strings.Count(string(data), "hang ") >= c.Hangs {
			return false
		}
	}
	logCall(c.Log, "hang")
	return true
}

// hang freezes pid's cgroup, seizes pid and waits to be killed, as a hung criu does.
func hang(pid int) {
	if dir := freezerOf(pid); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("FROZEN"), 0o644); err != nil {
			os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("1"), 0o644)
		}
	}
	runtime.LockOSThread() // ptrace belongs to the thread that attached
	if err := unix.PtraceSeize(pid); err != nil {
		fmt.Fprintf(os.Stderr, "fakecriu: seize %d: %v\n", pid, err)
	}
	for {
		time.Sleep(time.Hour)
	}
}

// freezerOf is the directory that freezes pid's cgroup: the v1 freezer, else its v2 cgroup.
func freezerOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	v2 := ""
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "freezer" {
			return "/sys/fs/cgroup/freezer" + parts[2]
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = "/sys/fs/cgroup" + parts[2]
		}
	}
	return v2
}

func logCall(path, what string) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s CRIU_FAULT=%s\n", what, os.Getenv("CRIU_FAULT"))
}
