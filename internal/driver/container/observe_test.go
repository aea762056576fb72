package container

import (
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/runc"
	"tandem/internal/testenv"
)

func TestCgroupFileHas(t *testing.T) {
	text := "12:freezer:/tandem/c1\n4:memory:/tandem/c1/init.scope\n0::/tandem/c1\n"
	for path, want := range map[string]bool{"/tandem/c1": true, "/tandem/c": false, "/tandem/c1/init.scope": true, "/other": false} {
		if got := cgroupFileHas(text, path); got != want {
			t.Errorf("cgroupFileHas(%q) = %v, want %v", path, got, want)
		}
	}
	if cgroupFileHas("0::/\n", "/tandem/c1") {
		t.Error("the root cgroup holds no container")
	}
}

// observe answers what `runc state` answers, through a container's life, without a process.
func TestObserveAgreesWithRunc(t *testing.T) {
	e := newEnv(t)
	h := e.launch(t, "obs", nil)
	ctx := testenv.Context(t, 5*time.Minute)
	agree := func(want driver.Status) {
		t.Helper()
		got, pid := e.d.observe(h.ID)
		rs, err := e.d.runc.State(ctx, h.ID)
		runcSays := driver.StatusStopped
		if err == nil && rs.Status == runc.StatusRunning {
			runcSays = driver.StatusRunning
		} else if err == nil && rs.Status == runc.StatusPaused {
			runcSays = driver.StatusPaused
		}
		if got != want || runcSays != want {
			t.Fatalf("observe %s, runc %s, want %s", got, runcSays, want)
		}
		if want != driver.StatusStopped && (err != nil || pid != rs.Pid) {
			t.Fatalf("observe pid %d, runc pid %d (%v)", pid, rs.Pid, err)
		}
	}
	agree(driver.StatusRunning)
	const n = 1000
	start := time.Now()
	for i := 0; i < n; i++ {
		e.d.State(ctx, h)
	}
	running := time.Since(start) / n
	if err := e.d.Pause(ctx, h); err != nil {
		t.Fatal(err)
	}
	agree(driver.StatusPaused)
	if err := e.d.Resume(ctx, h); err != nil {
		t.Fatal(err)
	}
	agree(driver.StatusRunning)
	if err := e.d.Stop(ctx, h, driver.StopOpts{Force: true}); err != nil {
		t.Fatal(err)
	}
	agree(driver.StatusStopped)
	start = time.Now()
	for i := 0; i < n; i++ {
		e.d.State(ctx, h)
	}
	stopped := time.Since(start) / n
	start = time.Now()
	e.d.runc.State(ctx, h.ID)
	t.Logf("State: %s a running container, %s a stopped one; one `runc state`: %s", running, stopped, time.Since(start))
}
