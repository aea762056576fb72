package containertest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// FakeCRIU is test/fakecriu's configuration (see there): a criu that hangs in dumps.
type FakeCRIU struct {
	Real     string `json:"real"`      // the real criu, for everything but the hangs
	Hangs    int    `json:"hangs"`     // dumps that hang (-1: all)
	SwrkOnly bool   `json:"swrk_only"` // only runc's dumps hang, not a `criu dump` run directly
	After    bool   `json:"after"`     // hang after the real dump ran to its end
	Log      string `json:"log"`       // set by BuildFakeCRIU
}

// BuildFakeCRIU builds test/fakecriu with conf into a temporary dir and returns the binary and
// its call log; the fake's processes are killed when the test ends.
func BuildFakeCRIU(t testing.TB, conf FakeCRIU) (bin, log string) {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	bin, conf.Log = filepath.Join(dir, "criu"), filepath.Join(dir, "calls.log")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", bin, "./test/fakecriu")
	build.Dir = filepath.Join(filepath.Dir(file), "..", "..", "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build fakecriu: %v\n%s", err, out)
	}
	data, _ := json.Marshal(conf)
	if err := os.WriteFile(bin+".json", data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("pkill", "-KILL", "-f", "^"+bin+" ").Run() })
	return bin, conf.Log
}
