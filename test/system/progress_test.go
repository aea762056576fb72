package system

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tandem/api"
)

// watchMoveProgress follows a daemon's operation events (`tandem events`) until the returned
// stop is called, and returns the distinct progress updates of its move operations.
func watchMoveProgress(t *testing.T, h *daemonHarness) (stop func() []api.Progress) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "tandem"), "--dir", h.dir, "events", "--type", "operation")
	// Stopped as Ctrl-C does, so that it exits cleanly with its output written; killed if it lingers.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // subscribed before the move starts
	return func() []api.Progress {
		time.Sleep(300 * time.Millisecond) // the last events in flight
		cancel()
		cmd.Wait() // ends by the cancel: its error says only that
		if errOut.Len() > 0 {
			t.Logf("tandem events: %s", errOut.String())
		}
		var seen []api.Progress
		sc := bufio.NewScanner(&out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev api.Event
			var op api.Operation
			if json.Unmarshal(sc.Bytes(), &ev) != nil || json.Unmarshal(ev.Metadata, &op) != nil ||
				!strings.Contains(op.Description, "oving instance") { // Moving, Live-moving
				continue
			}
			if n := len(seen); n == 0 || seen[n-1] != op.Progress {
				seen = append(seen, op.Progress)
			}
		}
		return seen
	}
}

// checkMoveProgress wants stage-by-stage progress from a live VM move: at least two updates with
// a stage, percentages that reach the memory stage, and the bytes QEMU sent.
func checkMoveProgress(t *testing.T, seen []api.Progress, wantDisk bool) {
	t.Helper()
	staged, stages := 0, map[string]bool{}
	var memBytes int64
	for _, p := range seen {
		if p.Stage != "" {
			staged++
			stages[p.Stage] = true
		}
		if p.Stage == "memory" && p.Bytes > memBytes {
			memBytes = p.Bytes
		}
	}
	t.Logf("%d progress updates, stages %v, memory bytes %d", len(seen), stages, memBytes)
	if staged < 2 || !stages["memory"] || memBytes == 0 || wantDisk && !stages["disk"] {
		t.Errorf("the move's progress: want 2+ staged updates, a memory stage with bytes (and a disk stage: %v); got %+v", wantDisk, seen)
	}
}
