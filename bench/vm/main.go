// Command vm benchmarks the VM driver against a plain qemu-system-x86_64 with the same kernel,
// initramfs, command line and memory, in the same run: launch-to-guest-init time (the initramfs's
// first console line), launch-to-agent time (driver only: the guest is up and answering) and QEMU's
// resident memory, for q35 and microvm under TCG. Run as root from the repository:
//
//	go run ./bench/vm [-n 5] [-memory 256]
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"

	"tandem/internal/driver"
	"tandem/internal/driver/vm"
	"tandem/internal/image"
)

const initMarker = "tandem-init: start"

type sample struct {
	toInit, toAgent time.Duration
	rssMiB          float64
}

func main() {
	runs := flag.Int("n", 3, "boots per machine and runner")
	memory := flag.Int("memory", 256, "guest memory in MiB")
	settle := flag.Duration("settle", 10*time.Second, "when after launch to read QEMU's RSS (same for both)")
	kernelDir := flag.String("kernel", vm.DefaultKernelDir, "guest kernel dir")
	flag.Parse()
	if err := run(*runs, *memory, *settle, *kernelDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench/vm:", err)
		os.Exit(1)
	}
}

func run(runs, memory int, settle time.Duration, kernelDir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	work, err := os.MkdirTemp("", "tbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	agentPath := filepath.Join(work, "tandem-agent")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentPath, "./cmd/tandem-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the agent (run from the repository root): %v %s", err, out)
	}
	images, err := busyboxImage(work)
	if err != nil {
		return err
	}
	d, err := vm.New(vm.Options{Dir: filepath.Join(work, "state"), RunDir: filepath.Join(work, "r"), Images: images,
		Accel: "tcg", KernelDir: kernelDir, AgentPath: agentPath, UserNetwork: true})
	if err != nil {
		return err
	}
	// An instance that is never started keeps the image's base disk, which the plain runs boot too.
	keep, err := d.Create(context.Background(), &driver.Spec{ID: uuid.NewString(), Name: "keep", Image: "busybox"})
	if err != nil {
		return err
	}
	defer d.Delete(context.Background(), keep)
	bases, _ := filepath.Glob(filepath.Join(work, "state", "bases", "*.qcow2"))
	if len(bases) != 1 {
		return fmt.Errorf("want one base disk, found %v", bases)
	}
	fmt.Printf("%d boots each, -m %d, TCG, busybox image; RSS read %v after launch\n\n", runs, memory, settle)
	fmt.Printf("%-8s %-7s %14s %14s %10s\n", "machine", "runner", "launch->init", "launch->agent", "RSS MiB")
	for _, machine := range []string{"q35", "microvm"} {
		var mine, plain []sample
		for i := 0; i < runs; i++ {
			s, args, err := viaDriver(d, machine, memory, settle)
			if err != nil {
				return fmt.Errorf("%s via driver: %w", machine, err)
			}
			mine = append(mine, s)
			p, err := viaPlainQEMU(work, bases[0], machine, memory, settle, args)
			if err != nil {
				return fmt.Errorf("%s plain: %w", machine, err)
			}
			plain = append(plain, p)
		}
		a, b := median(mine), median(plain)
		fmt.Printf("%-8s %-7s %14s %14s %10.0f\n", machine, "tandem", round(a.toInit), round(a.toAgent), a.rssMiB)
		fmt.Printf("%-8s %-7s %14s %14s %10.0f\n", machine, "plain", round(b.toInit), "-", b.rssMiB)
		fmt.Printf("%-8s %-7s %14.2f %14s %10.2f\n", machine, "ratio", a.toInit.Seconds()/b.toInit.Seconds(), "", a.rssMiB/b.rssMiB)
	}
	return nil
}

func round(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }

// median takes each column's median on its own.
func median(s []sample) sample {
	pick := func(f func(sample) float64) float64 {
		v := make([]float64, len(s))
		for i := range s {
			v[i] = f(s[i])
		}
		sort.Float64s(v)
		return v[len(v)/2]
	}
	return sample{
		toInit:  time.Duration(pick(func(x sample) float64 { return float64(x.toInit) })),
		toAgent: time.Duration(pick(func(x sample) float64 { return float64(x.toAgent) })),
		rssMiB:  pick(func(x sample) float64 { return x.rssMiB }),
	}
}

// viaDriver boots one VM through the driver and returns its timings and QEMU's arguments, from
// which the plain run takes the same kernel, initramfs and command line.
func viaDriver(d *vm.Driver, machine string, memory int, settle time.Duration) (sample, []string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	spec := &driver.Spec{ID: uuid.NewString(), Name: "bench", Type: "vm", Image: "busybox",
		Config: map[string]string{"limits.memory": fmt.Sprint(memory, "MiB"), vm.KeyMachine: machine}}
	h, err := d.Create(ctx, spec)
	if err != nil {
		return sample{}, nil, err
	}
	defer d.Delete(context.Background(), h)
	var s sample
	start := time.Now()
	if err := d.Start(ctx, h); err != nil {
		return s, nil, err
	}
	if s.toInit, err = waitFile(ctx, d.ConsoleLogPath(h), initMarker, start); err != nil {
		return s, nil, fmt.Errorf("guest hung before init: %w", err)
	}
	if err := d.WaitAgent(ctx, h); err != nil {
		return s, nil, fmt.Errorf("guest hung before the agent: %w", err)
	}
	s.toAgent = time.Since(start)
	time.Sleep(time.Until(start.Add(settle)))
	st, err := d.Stats(ctx, h)
	if err != nil {
		return s, nil, err
	}
	s.rssMiB = float64(st.MemoryBytes) / (1 << 20)
	args, err := qemuArgs(h.ID)
	if err != nil {
		return s, nil, err
	}
	return s, args, d.Stop(ctx, h, driver.StopOpts{Force: true})
}

// qemuArgs finds the running QEMU of an instance and returns its -kernel, -initrd and -append.
func qemuArgs(id string) ([]string, error) {
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, c := range cmdlines {
		b, err := os.ReadFile(c)
		if err != nil || !bytes.Contains(b, []byte(id)) || !bytes.Contains(b, []byte("-kernel")) {
			continue
		}
		all := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		var out []string
		for i := 0; i+1 < len(all); i++ {
			switch all[i] {
			case "-kernel", "-initrd", "-append":
				out = append(out, all[i], all[i+1])
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("qemu of %s not found", id)
}

// viaPlainQEMU boots the same kernel, initramfs and command line with the fewest options that do it.
func viaPlainQEMU(work, base, machine string, memory int, settle time.Duration, boot []string) (sample, error) {
	disk := filepath.Join(work, "plain.qcow2")
	os.Remove(disk)
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk).CombinedOutput(); err != nil {
		return sample{}, fmt.Errorf("qemu-img: %v %s", err, out)
	}
	dev := "virtio-blk-pci"
	if machine == "microvm" {
		dev = "virtio-blk-device"
	}
	args := append([]string{"-machine", machine, "-accel", "tcg", "-cpu", "max", "-m", fmt.Sprint(memory),
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
		"-drive", "file=" + disk + ",if=none,id=d,format=qcow2", "-device", dev + ",drive=d"}, boot...)
	cmd := exec.Command("qemu-system-x86_64", args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return sample{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	found := make(chan time.Duration, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), initMarker) {
				found <- time.Since(start)
				break
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	var s sample
	select {
	case s.toInit = <-found:
	case <-time.After(2 * time.Minute):
		return s, fmt.Errorf("plain qemu hung before init")
	}
	time.Sleep(time.Until(start.Add(settle)))
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		var kb float64
		if _, err := fmt.Sscanf(line, "VmRSS: %f kB", &kb); err == nil {
			s.rssMiB = kb / 1024
		}
	}
	return s, nil
}

// waitFile waits for marker to appear in a file, returning the time since start.
func waitFile(ctx context.Context, path, marker string, start time.Time) (time.Duration, error) {
	for {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(marker)) {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// images serves one unpacked busybox image.
type images struct {
	dir  string
	info driver.ImageInfo
}

func (i *images) Rootfs(context.Context, string) (string, driver.ImageInfo, error) {
	return i.dir, i.info, nil
}

func busyboxImage(work string) (*images, error) {
	ctx := context.Background()
	tarball, err := image.BuildBusybox(ctx, image.BusyboxOptions{Output: filepath.Join(work, "busybox.tar.zst")})
	if err != nil {
		return nil, err
	}
	f, err := os.Open(tarball)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rootfs := filepath.Join(work, "rootfs")
	if err := image.Unpack(ctx, f, rootfs, image.UnpackOptions{}); err != nil {
		return nil, err
	}
	return &images{dir: rootfs, info: driver.ImageInfo{Fingerprint: "bench", OS: "busybox",
		KernelCmdline: image.DefaultKernelCmdline}}, nil
}
