package migrate

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"tandem/api"
	"tandem/internal/driver/vm"
	"tandem/internal/units"
)

// Stages of a move, as the operation's progress names them.
const (
	StagePrepare = "prepare" // image, destination, checks
	StageRootfs  = "rootfs"  // copying the root filesystem or disk
	StageDump    = "dump"    // container: CRIU writes its memory (frozen)
	StageSend    = "send"    // container: copying the dump and what changed in the root (frozen)
	StageDisk    = "disk"    // VM: mirroring the root disk into the destination
	StageMemory  = "memory"  // VM: pre-copy of RAM; lazy container: pages following
	StageRestore = "restore" // resuming on the destination
)

// progressTick is how often a phase with no progress of its own (a CRIU dump, lazy pages) is
// sampled for its byte count.
const progressTick = 500 * time.Millisecond

// stage records progress of a stage, with the bytes it moved so far (total 0: unknown).
func (o *outgoing) stage(stage string, percent int, bytes, total int64, msg string) {
	o.op.SetProgress(api.Progress{Stage: stage, Percent: percent, Message: msg, Bytes: bytes, TotalBytes: total})
}

// step records progress of a step of the prepare stage.
func (o *outgoing) step(percent int, msg string) { o.stage(StagePrepare, percent, 0, 0, msg) }

// vmStage maps QEMU's figures of a live VM move onto the operation's progress: the disk mirror
// takes 5-45%, RAM 45-95% by what is sent of what is left to send (the remainder grows again as
// the guest dirties memory, so the figure can step back, as QEMU's own does).
func vmStage(p vm.MigrationProgress) api.Progress {
	switch p.Phase {
	case vm.PhaseDisk:
		pct := 5
		if p.DiskTotal > 0 {
			pct += int(40 * min(p.DiskDone, p.DiskTotal) / p.DiskTotal)
		}
		return api.Progress{Stage: StageDisk, Percent: pct, Bytes: p.DiskDone, TotalBytes: p.DiskTotal,
			Message: fmt.Sprintf("mirroring the disk: %s of %s", size(p.DiskDone), size(p.DiskTotal))}
	case vm.PhaseRAM, vm.PhaseSwitchover, vm.PhaseCompleted:
		pct := 45
		if sum := p.TransferredBytes + p.RemainingBytes; sum > 0 {
			pct += int(50 * p.TransferredBytes / sum)
		}
		msg := fmt.Sprintf("memory: %s sent, %s remaining, dirty rate %s/s", size(p.TransferredBytes),
			size(p.RemainingBytes), size(p.DirtyRate))
		if p.Phase != vm.PhaseRAM {
			msg += " (" + p.Phase + ")"
		}
		return api.Progress{Stage: StageMemory, Percent: min(pct, 95), Bytes: p.TransferredBytes,
			TotalBytes: p.TotalBytes, Message: msg}
	}
	return api.Progress{Stage: p.Phase, Percent: 45, Message: p.Phase}
}

// spanPercent places a phase's own percentage p (0-100) in from..to of the operation.
func spanPercent(from, to, p int) int {
	return from + (to-from)*max(0, min(p, 100))/100
}

// sample calls report every progressTick until ctx ends or the returned stop is called; stop
// waits for the sampler to finish, so nothing reports after it.
func sample(ctx context.Context, report func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(progressTick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				report()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// dirBytes is the size of the regular files under dir (what a dump wrote so far).
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

func size(n int64) string { return units.FormatSize(uint64(max(n, 0))) }
