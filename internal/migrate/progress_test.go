package migrate

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tandem/internal/driver/vm"
)

func TestVMStageMapping(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name        string
		in          vm.MigrationProgress
		stage       string
		pct         int
		bytes, tot  int64
		msgContains string
	}{
		{"mirror starts", vm.MigrationProgress{Phase: vm.PhaseDisk, DiskTotal: 100 * mib}, StageDisk, 5, 0, 100 * mib, "0B of 100MiB"},
		{"mirror half", vm.MigrationProgress{Phase: vm.PhaseDisk, DiskDone: 50 * mib, DiskTotal: 100 * mib}, StageDisk, 25, 50 * mib, 100 * mib, "mirroring the disk"},
		{"mirror in sync", vm.MigrationProgress{Phase: vm.PhaseDisk, DiskDone: 100 * mib, DiskTotal: 100 * mib}, StageDisk, 45, 100 * mib, 100 * mib, ""},
		// QEMU may count past the length while the guest writes: never past the stage's end.
		{"mirror overshoots", vm.MigrationProgress{Phase: vm.PhaseDisk, DiskDone: 120 * mib, DiskTotal: 100 * mib}, StageDisk, 45, 120 * mib, 100 * mib, ""},
		{"mirror length unknown", vm.MigrationProgress{Phase: vm.PhaseDisk}, StageDisk, 5, 0, 0, ""},
		{"ram starts", vm.MigrationProgress{Phase: vm.PhaseRAM, TotalBytes: 256 * mib, RemainingBytes: 256 * mib}, StageMemory, 45, 0, 256 * mib, "0B sent, 256MiB remaining"},
		{"ram quarter", vm.MigrationProgress{Phase: vm.PhaseRAM, TotalBytes: 256 * mib, TransferredBytes: 64 * mib, RemainingBytes: 192 * mib}, StageMemory, 57, 64 * mib, 256 * mib, "remaining"},
		{"ram switchover", vm.MigrationProgress{Phase: vm.PhaseSwitchover, TotalBytes: 256 * mib, TransferredBytes: 300 * mib, RemainingBytes: 0}, StageMemory, 95, 300 * mib, 256 * mib, "(switchover)"},
		{"ram completed", vm.MigrationProgress{Phase: vm.PhaseCompleted, TotalBytes: 256 * mib, TransferredBytes: 300 * mib}, StageMemory, 95, 300 * mib, 256 * mib, "(completed)"},
	} {
		got := vmStage(tc.in)
		if got.Stage != tc.stage || got.Percent != tc.pct || got.Bytes != tc.bytes || got.TotalBytes != tc.tot ||
			!strings.Contains(got.Message, tc.msgContains) {
			t.Errorf("%s: %+v, want stage %s %d%% bytes %d of %d, message with %q", tc.name, got, tc.stage, tc.pct, tc.bytes, tc.tot, tc.msgContains)
		}
	}
}

func TestSpanPercent(t *testing.T) {
	for _, tc := range []struct{ from, to, p, want int }{
		{5, 45, 0, 5}, {5, 45, 50, 25}, {5, 45, 100, 45}, {5, 45, 150, 45}, {55, 70, -3, 55}, {10, 90, 99, 89},
	} {
		if got := spanPercent(tc.from, tc.to, tc.p); got != tc.want {
			t.Errorf("spanPercent(%d, %d, %d) = %d, want %d", tc.from, tc.to, tc.p, got, tc.want)
		}
	}
}

// A dump in progress reports what it wrote so far, and nothing once stopped.
func TestSampleDumpBytes(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o700)
	os.WriteFile(filepath.Join(dir, "pages-1.img"), make([]byte, 3000), 0o600)
	os.WriteFile(filepath.Join(dir, "sub", "core.img"), make([]byte, 96), 0o600)
	var seen atomic.Int64
	var calls atomic.Int32
	stop := sample(context.Background(), func() { seen.Store(dirBytes(dir)); calls.Add(1) })
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	after := calls.Load()
	if after < 2 || seen.Load() != 3096 {
		t.Fatalf("sampled %d times, saw %d bytes, want 2+ samples of 3096", after, seen.Load())
	}
	time.Sleep(2 * progressTick)
	if calls.Load() != after {
		t.Fatal("the sampler reported after stop")
	}
}
