package container

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/containertest"
	"tandem/internal/driver/drivertest"
	"tandem/internal/testenv"
)

// The test binary is also the shim: the driver re-executes /proc/self/exe with ShimArg.
func TestMain(m *testing.M) {
	MaybeRunShim()
	code := m.Run()
	if imagesDir != "" {
		os.RemoveAll(imagesDir)
	}
	os.Exit(code)
}

var (
	imagesOnce sync.Once
	images     *containertest.Images
	imagesErr  error
	imagesDir  string
)

// env is one test's driver with its own directories, removed (with a leak check) at the end.
type env struct {
	d      *Driver
	dir    string
	parent string // cgroup parent
}

// realContainers is what running containers needs (testenv.Require's names).
var realContainers = []string{"root", "runc", "busybox"}

// newEnv builds (once) the busybox rootfs and makes a driver on fresh, short directories.
func newEnv(t *testing.T, tweak ...func(*Options)) *env {
	t.Helper()
	testenv.Require(t, realContainers...)
	imagesOnce.Do(func() {
		imagesDir, imagesErr = os.MkdirTemp("", "tdc-img-")
		if imagesErr == nil {
			images, imagesErr = containertest.BusyboxImages(imagesDir)
		}
	})
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	// 0711 like a daemon's state dir must be: container root (an unmapped uid) traverses it.
	dir, err := os.MkdirTemp("", "tdc-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o711)
	e := &env{dir: dir, parent: fmt.Sprintf("tandem-test-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)}
	opts := Options{Dir: filepath.Join(dir, "c"), RunDir: filepath.Join(dir, "r"), Images: images, CgroupParent: e.parent}
	for _, f := range tweak {
		f(&opts)
	}
	e.d, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.close(t) })
	return e
}

// close checks that no container is left and removes the directories and cgroup parent.
func (e *env) close(t *testing.T) {
	if owners, _ := e.d.ids.Owners(); len(owners) > 0 && !t.Failed() {
		t.Errorf("id ranges still allocated: %v", owners)
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/" + e.parent)
	cgroups2, _ := filepath.Glob("/sys/fs/cgroup/" + e.parent)
	for _, cg := range append(cgroups, cgroups2...) {
		if left, _ := filepath.Glob(cg + "/*/"); len(left) > 0 && !t.Failed() {
			t.Errorf("cgroups left behind: %v", left)
		}
		os.Remove(cg)
	}
	os.RemoveAll(e.dir)
}

func (e *env) spec(name string, config map[string]string) *driver.Spec {
	if config == nil {
		config = map[string]string{}
	}
	return &driver.Spec{ID: fmt.Sprintf("%s-%d", name, time.Now().UnixNano()), Name: name, Type: "container",
		Image: "busybox", Config: config}
}

func TestConformance(t *testing.T) {
	testenv.Require(t, realContainers...)
	drivertest.Run(t, drivertest.Harness{
		New: func(t *testing.T) driver.Driver { return newEnv(t).d },
		Spec: func(t *testing.T, name string) *driver.Spec {
			return &driver.Spec{Name: name, Type: "container", Image: "busybox", Config: map[string]string{}}
		},
		Timeout: 2 * time.Minute,
	})
}

// launch creates and starts a container that is force-stopped and deleted when the test ends.
func (e *env) launch(t *testing.T, name string, config map[string]string) *driver.Handle {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	h, err := e.d.Create(ctx, e.spec(name, config))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // the test's context has ended
		defer cancel()
		e.d.Stop(ctx, h, driver.StopOpts{Force: true})
		if err := e.d.Delete(ctx, h); err != nil {
			t.Errorf("Delete: %v", err)
		}
	})
	if err := e.d.Start(ctx, h); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return h
}

// run execs a shell command in the container and returns its stdout+stderr and exit code.
func (e *env) run(t *testing.T, h *driver.Handle, script string) (string, int) {
	t.Helper()
	ctx := testenv.Context(t, time.Minute)
	var out bytes.Buffer
	code, err := e.d.Exec(ctx, h, ExecRequest{Cmd: []string{"/bin/sh", "-c", script}, Stdout: &out, Stderr: &out})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	return out.String(), code
}

// waitLog waits until the console log contains want.
func (e *env) waitLog(t *testing.T, h *driver.Handle, want string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := e.d.ConsoleLog(testenv.Context(t, 5*time.Minute), h)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		r.Close()
		if strings.Contains(string(data), want) {
			return string(data)
		}
		if time.Now().After(deadline) {
			t.Fatalf("console log lacks %q after 20s:\n%s", want, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
