package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// bootFlags are DESIGN.md's TCG boot-speed flags.
const bootFlags = "tsc=reliable no_timer_check i8042.noaux i8042.nomux 8250.nr_uarts=1 cryptomgr.notests audit=0 rcupdate.rcu_expedited=1"

// console collects a VM's serial output and lets a test wait for text in it.
type console struct {
	mu  sync.Mutex
	buf strings.Builder
}

// copy reads raw chunks, not lines: a login prompt has no newline after it.
func (c *console) copy(r io.Reader) {
	b := make([]byte, 4096)
	for {
		n, err := r.Read(b)
		c.mu.Lock()
		c.buf.WriteString(strings.ReplaceAll(string(b[:n]), "\r", ""))
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *console) tail() string {
	lines := strings.Split(c.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-30):], "\n")
}

// qmpCommand sends one QMP command on a fresh connection.
func qmpCommand(sock, cmd string) error {
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	dec := json.NewDecoder(conn)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return err
	}
	for _, c := range []string{"qmp_capabilities", cmd} {
		fmt.Fprintf(conn, `{"execute":%q}`+"\n", c)
		for {
			var reply map[string]any
			if err := dec.Decode(&reply); err != nil {
				return err
			}
			if _, ok := reply["event"]; ok {
				continue
			}
			if e, ok := reply["error"]; ok {
				return fmt.Errorf("%s: %v", c, e)
			}
			break
		}
	}
	return nil
}

// vm is a QEMU process booted the way the VM driver will boot a rootfs image.
type vm struct {
	con    *console
	stdin  io.Writer
	qmp    string
	exited chan error
	start  time.Time
}

// bootRootfs makes a root disk from rootfs and an initramfs from the guest kernel's modules, and
// boots them under TCG on the pc machine. It skips when QEMU or the guest kernel are missing.
func bootRootfs(t *testing.T, ctx context.Context, rootfs, cmdline string) *vm {
	t.Helper()
	k, err := FindGuestKernel("")
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	qemu, err := lookTool("qemu-system-x86_64")
	if err != nil {
		t.Skipf("skipping: %v", err)
	}
	work := t.TempDir()
	disk, err := BuildRootDisk(ctx, rootfs, filepath.Join(work, "root.qcow2"), 0)
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(work, "initrd.img")
	if err := BuildInitramfs(ctx, initrd, k.ModulesDir, DefaultInitramfsModules); err != nil {
		t.Fatal(err)
	}
	kernel := k.Vmlinux
	if kernel == "" {
		kernel = k.Vmlinuz
	}
	v := &vm{con: &console{}, qmp: filepath.Join(work, "qmp.sock"), exited: make(chan error, 1)}
	cmd := exec.CommandContext(ctx, qemu, "-M", "pc", "-accel", "tcg", "-m", "512", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline+" "+bootFlags+" root=/dev/vda",
		"-drive", "file="+disk.Path+",if=none,id=root,format="+disk.Format, "-device", "virtio-blk-pci,drive=root",
		"-qmp", "unix:"+v.qmp+",server=on,wait=off")
	v.stdin, _ = cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	v.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go v.con.copy(stdout)
	go func() { v.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	if os.Getenv("TANDEM_TEST_CONSOLE") != "" {
		t.Cleanup(func() { t.Logf("console:\n%s", v.con.String()) })
	}
	return v
}

// powerdown presses the ACPI power button (QEMU's system_powerdown) and waits for QEMU to exit:
// the image's own init must act on the button.
func (v *vm) powerdown(t *testing.T, d time.Duration) {
	t.Helper()
	if err := qmpCommand(v.qmp, "system_powerdown"); err != nil {
		t.Fatalf("system_powerdown: %v", err)
	}
	select {
	case err := <-v.exited:
		if err != nil {
			t.Fatalf("qemu: %v\n%s", err, v.con.tail())
		}
		t.Logf("powered off %s after start, by the ACPI button", time.Since(v.start).Round(100*time.Millisecond))
	case <-time.After(d):
		t.Fatalf("hung: no poweroff %s after system_powerdown:\n%s", d, v.con.tail())
	}
}

// TestBusyboxBootsAsVM boots the busybox image as a VM: root disk from the rootfs, kernel plus
// BuildInitramfs; checks the console shell and job control, and powers off with the ACPI button.
// Every wait has a deadline and says "hung" when it passes.
func TestBusyboxBootsAsVM(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: boots a VM under TCG (-short)")
	}
	requireRoot(t)
	if _, err := findBusybox(""); err != nil {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := openStore(t)
	img, err := s.Build(ctx, BuildOptions{Kind: "busybox"})
	if err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if err := s.UnpackRootfs(ctx, img.Fingerprint, rootfs, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	v := bootRootfs(t, ctx, rootfs, img.Metadata.KernelCmdline)
	// The console shell answers once boot is done; keep asking until it does.
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(v.con.String(), "MARK-42") {
		if time.Now().After(deadline) {
			t.Fatalf("hung: no shell on the console after 90s:\n%s", v.con.tail())
		}
		fmt.Fprintln(v.stdin, "echo MARK-$((6*7))")
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("shell on the console after %s", time.Since(v.start).Round(100*time.Millisecond))
	fmt.Fprintln(v.stdin, `echo ROOT-$(grep -c '^/dev/vda / ext4' /proc/mounts) HOST-$(hostname) INIT-$(cat /proc/1/comm)`)
	waitFor(t, v.con, "ROOT-1 HOST-busybox INIT-init", 20*time.Second)
	// Job control: Ctrl-C reaches a foreground command, so the console is a controlling terminal.
	fmt.Fprintln(v.stdin, "sleep 60")
	time.Sleep(time.Second)
	fmt.Fprint(v.stdin, "\x03")
	fmt.Fprintln(v.stdin, "echo AFTER-$((1+1))")
	waitFor(t, v.con, "AFTER-2", 10*time.Second)
	v.powerdown(t, 45*time.Second)
}

func waitFor(t *testing.T, con *console, text string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(con.String(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("hung: %q not on the console after %s:\n%s", text, d, con.tail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
