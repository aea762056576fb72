package qemucmd

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"tandem/internal/hostexec"
	"tandem/internal/qmp"
	"tandem/internal/testenv"
)

// TestQEMUAcceptsProfiles runs the real QEMU, paused, on every profile (with host paths swapped in for
// temporary ones) and checks it gets as far as answering QMP: the golden files only prove the args are
// what we meant, this proves QEMU 7.2 takes them.
func TestQEMUAcceptsProfiles(t *testing.T) {
	testenv.Require(t, "qemu", "qemu-img", "guest-kernel")
	bin, err := hostexec.Look("qemu-system-x86_64")
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(testenv.GuestKernelDir(), "vmlinux")
	for name, cfg := range profiles() {
		t.Run(name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "qc")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			disk := filepath.Join(dir, "root.qcow2")
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
				t.Fatalf("qemu-img: %v %s", err, out)
			}
			cfg.Disks[0].Path = disk
			cfg.QMPSocket, cfg.ConsoleSocket = filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "con.sock")
			cfg.ConsoleLog, cfg.PIDFile = filepath.Join(dir, "console.log"), filepath.Join(dir, "pid")
			if cfg.AgentSocket != "" {
				cfg.AgentSocket = filepath.Join(dir, "agent.sock")
			}
			if cfg.Kernel != "" {
				cfg.Kernel, cfg.Initrd = kernel, ""
			}
			if cfg.Firmware.Code != "" {
				testenv.Require(t, "ovmf", "ovmf-ms")
				vars := filepath.Join(dir, "vars.fd")
				data, err := os.ReadFile(filepath.Join(filepath.Dir(cfg.Firmware.Code), "OVMF_VARS_4M.fd"))
				if err != nil {
					t.Fatal(err)
				}
				os.WriteFile(vars, data, 0o600)
				cfg.Firmware.Vars = vars
			}
			if cfg.DebugConLog != "" {
				cfg.DebugConLog = filepath.Join(dir, "fw.log")
			}
			cfg.TPMSocket = ""   // needs a running swtpm: the VM system test covers it
			cfg.CDROMs = nil     // needs an ISO file
			cfg.Accel = AccelTCG // KVM hangs on the build machines
			for i := range cfg.NICs {
				cfg.NICs[i] = NIC{ID: cfg.NICs[i].ID, MAC: cfg.NICs[i].MAC, User: true} // no tap here
			}
			args, err := Build(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, args...)
			out, _ := os.Create(filepath.Join(dir, "qemu.log"))
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan struct{})
			go func() { cmd.Wait(); close(exited) }()
			defer func() { cmd.Process.Kill(); <-exited }()
			ctx := testenv.Context(t, 20*time.Second)
			for {
				c, err := qmp.Dial(ctx, cfg.QMPSocket)
				if err == nil {
					st, err := c.QueryStatus(ctx)
					c.Close()
					if err != nil || st.Status != qmp.StatePrelaunch {
						t.Fatalf("status %+v, %v", st, err)
					}
					return
				}
				select {
				case <-exited:
					log, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
					t.Fatalf("qemu refused the %s profile: %s", name, log)
				case <-ctx.Done():
					t.Fatalf("qemu never answered QMP (hung?)")
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
}
