package fake

import (
	"context"
	"errors"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/drivertest"
)

func TestConformanceInMemory(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver {
			d, _ := New(Options{})
			return d
		},
		Spec: func(t *testing.T, name string) *driver.Spec {
			return &driver.Spec{Name: name, Type: "container", Image: "busybox"}
		},
	})
}

func TestConformancePersisted(t *testing.T) {
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver {
			d, err := New(Options{Dir: t.TempDir(), Delay: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: func(t *testing.T, name string) *driver.Spec {
			return &driver.Spec{Name: name, Type: "vm", Image: "busybox"}
		},
	})
}

// State persisted in Dir outlives the driver object, as a real instance outlives the daemon.
func TestStateOutlivesDriver(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d1, _ := New(Options{Dir: dir})
	h, err := d1.Create(ctx, &driver.Spec{ID: "x1", Name: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	d1.Start(ctx, h)
	d2, _ := New(Options{Dir: dir})
	if err := d2.Recover(ctx, h); err != nil {
		t.Fatal(err)
	}
	if st, _ := d2.State(ctx, h); st != driver.StatusRunning {
		t.Fatalf("state after new driver: %s", st)
	}
}

func TestDelayHonoursCancel(t *testing.T) {
	d, _ := New(Options{Delay: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := d.Create(ctx, &driver.Spec{ID: "x", Name: "c"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	if d.Count() != 0 {
		t.Fatal("cancelled create left an instance")
	}
}
