package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"tandem/internal/qmp"
)

const guestKernel = "/usr/local/share/tandem/guest/vmlinux"

// consoleShell is the busybox image's shell prompt on the serial console (PS1 '\h:\w\$ '): the
// guest has booted and its init has nothing more to start.
const consoleShell = ":/# "

// plainQEMU is the VM baseline: the guest tandem's first VM boots (its machine, CPU model, memory,
// kernel, initramfs and command line, read from that QEMU's command line; a copy of the base disk
// under its root disk) in a bare qemu-system-x86_64 with no NIC, agent port, balloon or RNG, migrated over
// loopback TCP to a second one started with -incoming, driven through QMP. Both ends open the same
// disk file: on one host the disk is trivially shared.
type plainQEMU struct {
	work    string
	guest   []string // the arguments both ends get
	cur     *qemuProc
	procs   []*qemuProc
	settle  time.Duration
	version string
}

// qemuProc is one qemu-system-x86_64 and its QMP connection.
type qemuProc struct {
	cmd     *exec.Cmd
	qmp     *qmp.Client
	console string // its serial console log
	exited  chan struct{}
}

// newPlainQEMU boots the baseline guest and waits until it idles. It may return a half-started
// baseline with an error, for close to end.
func newPlainQEMU(ctx context.Context, work, stateDir string, settle time.Duration) (*plainQEMU, error) {
	q := &plainQEMU{work: work, settle: settle, version: firstLine(ctx, "qemu-system-x86_64", "--version")}
	args, root, err := guestArgs(stateDir)
	if err != nil {
		return nil, err
	}
	// tandem's root is an overlay over the pool's copy of the image's base disk: copy that base,
	// as it was built. A copy, not an overlay: host-a drops the base once tandem's VM has left.
	var info struct {
		Backing string `json:"full-backing-filename"`
	}
	out, err := sh(ctx, "qemu-img", "info", "-U", "--output=json", root)
	if err == nil {
		err = json.Unmarshal([]byte(out), &info)
	}
	if err != nil || info.Backing == "" {
		return nil, fmt.Errorf("no base disk under tandem's root disk %s (%v)", root, err)
	}
	disk := filepath.Join(work, "plain.qcow2")
	if _, err := sh(ctx, "qemu-img", "convert", "-U", "-O", "qcow2", info.Backing, disk); err != nil {
		return nil, err
	}
	dev := "virtio-blk-pci"
	if strings.HasPrefix(argValue(args, "-machine"), "microvm") {
		dev = "virtio-blk-device"
	}
	q.guest = append(args, "-nodefaults", "-no-user-config", "-display", "none",
		"-drive", "file="+disk+",if=none,id=root,format=qcow2", "-device", dev+",drive=root")
	fmt.Println("vm baseline: booting the same guest in a plain QEMU ...")
	if q.cur, err = q.start(ctx); err != nil {
		return q, err
	}
	err = poll(ctx, 5*time.Minute, func() error { // TCG on a busy host boots slowly
		if b, _ := os.ReadFile(q.cur.console); !bytes.Contains(b, []byte(consoleShell)) {
			return fmt.Errorf("no shell prompt on the console yet (%s)", q.cur.console)
		}
		return nil
	})
	if err != nil {
		return q, err
	}
	return q, sleep(ctx, settle)
}

// guestArgs reads the guest's definition from the QEMU that tandem runs for the one VM under
// stateDir: every option that shapes the guest and its migration stream but no device; and the
// file of its root disk.
func guestArgs(stateDir string) (args []string, root string, err error) {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range cmdlines {
		b, err := os.ReadFile(c)
		if err != nil || !bytes.Contains(b, []byte(stateDir+"/")) || !bytes.Contains(b, []byte("\x00-kernel\x00")) {
			continue
		}
		all := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for _, opt := range []string{"-machine", "-accel", "-cpu", "-m", "-smp", "-kernel", "-initrd", "-append"} {
			if v := argValue(all, opt); v != "" {
				args = append(args, opt, v)
			}
		}
		for i := 0; i+1 < len(all); i++ {
			var node struct {
				Name string `json:"node-name"`
				File struct {
					Name string `json:"filename"`
				} `json:"file"`
			}
			if all[i] == "-blockdev" && json.Unmarshal([]byte(all[i+1]), &node) == nil && node.Name == "fmt-root" {
				root = node.File.Name
			}
		}
		if root == "" {
			return nil, "", fmt.Errorf("tandem's QEMU for the VM under %s has no root disk node", stateDir)
		}
		return args, root, nil
	}
	return nil, "", fmt.Errorf("no QEMU of a VM under %s found", stateDir)
}

// argValue is the value following the first opt in args, or "".
func argValue(args []string, opt string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt {
			return args[i+1]
		}
	}
	return ""
}

// start starts a QEMU of the guest with extra options and connects to its QMP. QMP answers once
// QEMU has set up, so with -incoming it listens by then.
func (q *plainQEMU) start(ctx context.Context, extra ...string) (*qemuProc, error) {
	n := len(q.procs)
	sock := filepath.Join(q.work, fmt.Sprintf("qmp%d.sock", n))
	p := &qemuProc{console: filepath.Join(q.work, fmt.Sprintf("console%d.log", n)), exited: make(chan struct{})}
	args := append(append([]string(nil), q.guest...), "-qmp", "unix:"+sock+",server=on,wait=off",
		"-serial", "file:"+p.console)
	p.cmd = exec.Command("qemu-system-x86_64", append(args, extra...)...)
	stderr := &bytes.Buffer{}
	p.cmd.Stderr = stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C is the benchmark's to handle
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	q.procs = append(q.procs, p)
	go func() { p.cmd.Wait(); close(p.exited) }()
	return p, poll(ctx, 30*time.Second, func() error {
		select {
		case <-p.exited:
			return fmt.Errorf("qemu exited: %s", stderr)
		default:
		}
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		c, err := qmp.Dial(dctx, sock)
		p.qmp = c
		return err
	})
}

// move migrates the guest to a new QEMU on this host with the settings tandem's move uses
// (internal/migrate/vm.go): no bandwidth cap instead of QEMU's 128 MiB/s, auto-converge, a 300 ms
// downtime limit (QEMU's default). total runs from starting the destination QEMU until the guest
// runs there, as tandem's includes starting it; QEMU's own total-time is kept beside it. The
// downtime is QEMU's figure, as tandem reports it; sent is the RAM QEMU sent.
func (q *plainQEMU) move(ctx context.Context) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return sample{}, err
	}
	addr := l.Addr().String()
	l.Close() // a free port, for QEMU to listen on
	src := q.cur
	start := time.Now()
	dst, err := q.start(ctx, "-incoming", "tcp:"+addr)
	if err != nil {
		return sample{}, err
	}
	err = src.qmp.MigrateSetCapabilities(ctx, map[string]bool{"auto-converge": true})
	if err == nil {
		err = src.qmp.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": int64(1) << 40, "downtime-limit": 300})
	}
	if err == nil {
		err = src.qmp.Migrate(ctx, "tcp:"+addr)
	}
	var info qmp.MigrationInfo
	for err == nil && info.Status != qmp.MigrationCompleted {
		if info, err = src.qmp.QueryMigrate(ctx); err == nil && (info.Status == qmp.MigrationFailed || info.Status == qmp.MigrationCancelled) {
			err = fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		if err == nil {
			err = sleep(ctx, 10*time.Millisecond)
		}
	}
	for st := (qmp.StatusInfo{}); err == nil && !st.Running; {
		if st, err = dst.qmp.QueryStatus(ctx); err == nil && !st.Running {
			err = sleep(ctx, 10*time.Millisecond)
		}
	}
	if err != nil {
		dst.kill()
		return sample{}, err
	}
	s := sample{total: time.Since(start), pause: ms(info.Downtime), mode: "migrate tcp", qemu: ms(info.TotalTime)}
	if info.RAM != nil {
		s.sent = info.RAM.Transferred
	}
	src.kill()
	q.cur = dst
	return s, sleep(ctx, q.settle)
}

// kill ends a QEMU (the guest has moved on, or the benchmark ends) and waits for it.
func (p *qemuProc) kill() {
	if p.qmp != nil {
		p.qmp.Close()
	}
	p.cmd.Process.Kill()
	<-p.exited
}

// close ends every QEMU the baseline started; q may be nil.
func (q *plainQEMU) close() bool {
	if q != nil {
		for _, p := range q.procs {
			select {
			case <-p.exited:
			default:
				p.kill()
			}
		}
	}
	return true
}
