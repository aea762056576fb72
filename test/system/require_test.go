package system

import (
	"context"
	"errors"
	"os"

	"tandem/internal/driver/container"
	"tandem/internal/testenv"
)

// What groups of system tests need (testenv.Require's names).
var (
	// realDrivers runs real containers and VMs under a daemon.
	realDrivers = []string{"root", "runc", "qemu", "iproute2", "dnsmasq", "guest-kernel", "busybox"}
	// realContainers runs the container driver directly.
	realContainers = []string{"root", "runc", "busybox"}
)

// "checkpoint": this host's CRIU can really dump and restore (the driver's probe): a fact about
// the kernel, so a skip under CI too; a CRIU that is not installed fails under CI.
func init() {
	testenv.Define("checkpoint", testenv.Host, func(ctx context.Context) error {
		criu, err := testenv.CRIU()
		if err != nil {
			return err
		}
		dir, err := os.MkdirTemp("", "tandem-probe-")
		if err != nil {
			return err
		}
		if s := container.HostCheckpointSupport(ctx, criu, dir); !s.Available {
			return errors.New("this host cannot checkpoint: " + s.Reason)
		}
		return nil
	}, "root", "criu")
}
