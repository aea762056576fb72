package vm

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"tandem/internal/testenv"
)

// The driver lists the VMs it has a config for, so the daemon can find those it has no record of;
// a directory without one (a create cut short before it) or with a bad name is not an instance.
func TestInstanceIDs(t *testing.T) {
	f := newFakeVM(t)
	os.MkdirAll(filepath.Join(f.d.opts.Dir, "instances", "half-made"), 0o700)
	os.MkdirAll(filepath.Join(f.d.opts.Dir, "instances", ".hidden"), 0o700)
	ids, err := f.d.InstanceIDs(testenv.Context(t, time.Minute))
	if err != nil || !slices.Equal(ids, []string{f.h.ID}) {
		t.Fatalf("ids %v %v, want [%s]", ids, err, f.h.ID)
	}
}
