package vm_test

import (
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/drivertest"
	"tandem/internal/driver/vm/vmtest"
	"tandem/internal/testenv"
)

// The conformance suite against real QEMU under TCG. Every subtest boots a VM; the suite's timeout
// bounds each, so a hung boot fails rather than waits.
func TestConformance(t *testing.T) {
	testenv.Require(t, vmtest.Components...)
	images := vmtest.BusyboxImages(t)
	dirs := vmtest.NewDirs(t)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver { return vmtest.NewDriver(t, dirs, images) },
		Spec: func(t *testing.T, name string) *driver.Spec {
			return &driver.Spec{Name: name, Type: "vm", Image: "busybox", Config: map[string]string{"limits.memory": "256MiB"}}
		},
		Timeout: 3 * time.Minute,
	})
}
