package vm

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"tandem/internal/logfile"
)

// QEMU cannot cap a file it logs to, and a guest can print megabytes a second: its console log
// goes into a FIFO in the run dir instead, which a small process of its own (this binary,
// re-executed) drains into console.log, rotated to console.log.1 at ConsoleLogMax, as a
// container's shim does with its console. It runs in its own session, so it outlives the daemon
// as QEMU does, and ends when QEMU closes the FIFO.

// ConsoleLogArg is the re-exec convention: a process started with this as argv[1] drains a VM's
// console FIFO; argv[2:] are the FIFO, the log and the cap in bytes.
const ConsoleLogArg = "__tandem-vm-console-log"

// MaybeRunConsoleLog runs the drain and exits if this process was started as one; otherwise it
// returns at once. The daemon's main calls it before anything else.
func MaybeRunConsoleLog() {
	if len(os.Args) > 1 && os.Args[1] == ConsoleLogArg {
		os.Exit(consoleLogMain(os.Args[2:]))
	}
}

func consoleLogMain(args []string) int {
	if len(args) != 3 {
		fmt.Fprintf(os.Stderr, "%s: want FIFO LOG MAX, got %q\n", ConsoleLogArg, args)
		return 2
	}
	max, err := strconv.ParseInt(args[2], 10, 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: max %q: %v\n", ConsoleLogArg, args[2], err)
		return 2
	}
	if err := logfile.DrainFIFO(args[0], args[1], max); err != nil {
		fmt.Fprintf(os.Stderr, "console log: %v\n", err)
		return 1
	}
	return 0
}

// startConsoleLog makes the console FIFO (QEMU's user may write it) and starts its drain, and
// returns the path QEMU is to log to, the drain's pid (0 for none) and a func that ends a drain
// whose QEMU never opened the FIFO. Without a helper QEMU logs to the file itself.
func (d *Driver) startConsoleLog(p paths) (string, int, func(), error) {
	if d.opts.ConsoleLogHelper == "" {
		return p.consoleLog, 0, func() {}, nil
	}
	logfile.Release(p.consoleFIFO) // a drain a crashed start left waiting
	if err := os.Remove(p.consoleFIFO); err != nil && !os.IsNotExist(err) {
		return "", 0, nil, err
	}
	if err := syscall.Mkfifo(p.consoleFIFO, 0o600); err != nil {
		return "", 0, nil, fmt.Errorf("vm: console fifo: %w", err)
	}
	if err := d.giveFile(p.consoleFIFO); err != nil {
		return "", 0, nil, err
	}
	max := d.opts.ConsoleLogMax
	if max <= 0 {
		max = logfile.DefaultMax
	}
	// As root: the drain writes the instance's dir, and the daemon's own binary may not be
	// readable by QEMU's user.
	args := []string{ConsoleLogArg, p.consoleFIFO, p.consoleLog, strconv.FormatInt(max, 10)}
	pid, _, err := d.spawnAs(nil, d.opts.ConsoleLogHelper, args, p.qemuLog)
	if err != nil {
		return "", 0, nil, fmt.Errorf("vm: console log: %w", err)
	}
	return p.consoleFIFO, pid, func() { logfile.Release(p.consoleFIFO) }, nil
}
