package container

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// `criu check` passes on hosts where every dump hangs (MIGRATION.md, "When criu dump hangs"), so
// whether this host can checkpoint is found by doing it: a throw-away process is dumped and
// restored under a deadline. A yes is a fact about the kernel, CPU and CRIU binary, so it is
// cached for the boot and shared by every daemon here.

// checkpointProbeTimeout bounds the whole probe (a dump and a restore take ~0.3 s where they
// work); probeCacheDir holds the cached answers, one file per boot and CRIU binary. Variables so
// that tests can use their own.
var (
	checkpointProbeTimeout = 10 * time.Second
	probeCacheDir          = "/run/tandem"
)

// CheckpointSupport says whether this host can checkpoint containers.
type CheckpointSupport struct {
	Known     bool          `json:"-"` // false while the probe runs
	Available bool          `json:"available"`
	Reason    string        `json:"reason,omitempty"` // why not
	Took      time.Duration `json:"took"`
	Key       string        `json:"key"` // boot and CRIU binary the answer is for
}

// String is what `tandem host info` shows.
func (s CheckpointSupport) String() string {
	switch {
	case !s.Known:
		return "being probed"
	case s.Available:
		return "available"
	}
	return "unavailable (" + s.Reason + ")"
}

// startCheckpointProbe takes the boot's cached answer, or starts the probe in the background.
func (d *Driver) startCheckpointProbe() {
	d.probeDone = make(chan struct{})
	if s, ok := cachedCheckpointSupport(d.criuPath); ok {
		d.probe = s
		close(d.probeDone)
		return
	}
	go func() {
		defer close(d.probeDone)
		s := probeAndCache(context.Background(), d.criuPath, filepath.Join(d.opts.RunDir, "criu-probe"))
		if s.Available {
			slog.Info("checkpoint: available", "probe", s.Took.Round(time.Millisecond))
		} else {
			slog.Warn("checkpoint: unavailable: stateful stops and live container moves are refused on this host", "reason", s.Reason)
		}
		d.probe = s
	}()
}

// HostCheckpointSupport says whether this host can checkpoint with criu: the boot's cached
// answer, or a probe (in workDir, bounded by checkpointProbeTimeout and ctx) whose answer is
// cached for the boot.
func HostCheckpointSupport(ctx context.Context, criu, workDir string) CheckpointSupport {
	if s, ok := cachedCheckpointSupport(criu); ok {
		return s
	}
	return probeAndCache(ctx, criu, workDir)
}

// probeAndCache probes (bounded by checkpointProbeTimeout and ctx) and caches a yes for the boot.
func probeAndCache(ctx context.Context, criu, workDir string) CheckpointSupport {
	pctx, cancel := context.WithTimeout(ctx, checkpointProbeTimeout)
	defer cancel()
	s := probeCheckpoint(pctx, criu, workDir)
	s.Key = probeKey(criu)
	// Only a yes is kept for the boot: a no may come of a moment's load, and a daemon that starts
	// later asks again (10 s in the background where criu really hangs).
	if s.Available && ctx.Err() == nil && os.MkdirAll(probeCacheDir, 0o700) == nil {
		if data, err := json.Marshal(s); err == nil {
			fsutil.WriteFileAtomic(probeCachePath(s.Key), data, 0o600)
		}
	}
	return s
}

// cachedCheckpointSupport is the answer already known for criu on this boot, if any.
func cachedCheckpointSupport(criu string) (CheckpointSupport, bool) {
	if criu == "" {
		return CheckpointSupport{Known: true, Reason: "CRIU is not installed"}, true
	}
	key := probeKey(criu)
	return readProbeCache(probeCachePath(key), key)
}

func probeCachePath(key string) string {
	return filepath.Join(probeCacheDir, "checkpoint-probe-"+key[:16]+".json")
}

// CheckpointSupport waits (bounded by ctx) for the probe and returns its answer.
func (d *Driver) CheckpointSupport(ctx context.Context) CheckpointSupport {
	select {
	case <-d.probeDone:
		return d.probe
	case <-ctx.Done():
		return CheckpointSupport{}
	}
}

// checkpointSupportNow is the probe's answer if it has one, without waiting.
func (d *Driver) checkpointSupportNow() CheckpointSupport {
	select {
	case <-d.probeDone:
		return d.probe
	default:
		return CheckpointSupport{}
	}
}

// checkpointRefusal is nil when this host can checkpoint, else an Unavailable error saying why.
func (d *Driver) checkpointRefusal(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, checkpointProbeTimeout+5*time.Second)
	defer cancel()
	s := d.CheckpointSupport(wctx)
	switch {
	case !s.Known:
		return errdefs.Unavailable("checkpoint: this host's CRIU probe has not finished")
	case !s.Available:
		return errdefs.Unavailable("checkpoint is unavailable on this host: %s", s.Reason)
	}
	return nil
}

// probeCheckpoint dumps and restores a throw-away process with criu under ctx's deadline.
func probeCheckpoint(ctx context.Context, criu, dir string) CheckpointSupport {
	start := time.Now()
	fail := func(format string, args ...any) CheckpointSupport {
		return CheckpointSupport{Known: true, Reason: fmt.Sprintf(format, args...), Took: time.Since(start)}
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(dir)
	deadline, _ := ctx.Deadline()
	limit := time.Until(deadline).Round(time.Second)

	// Descriptors this process inherited without close-on-exec (a flock(1) that started it, say)
	// would pass to the victim, and CRIU refuses a task holding a lock it was not asked for.
	unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	// A session leader of its own (CRIU refuses a task whose session is outside the tree).
	victim := exec.Command("/bin/sleep", "1000")
	victim.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := victim.Start(); err != nil {
		return fail("start a process to dump: %v", err)
	}
	defer func() {
		victim.Process.Kill()
		victim.Wait()
	}()
	time.Sleep(50 * time.Millisecond) // exec'd: dump sleep, not a half-made child of ours

	dump := criuCommand(ctx, criu, "dump", "-t", strconv.Itoa(victim.Process.Pid), "-D", dir, "-o", "dump.log", "-v4")
	if out, err := dump.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return fail("criu dump did not finish in %s on this kernel%s", limit, logTail(filepath.Join(dir, "dump.log")))
		}
		return fail("criu dump failed: %v%s %s", err, criuErrors(filepath.Join(dir, "dump.log")), strings.TrimSpace(string(out)))
	}
	victim.Wait() // reaped, so that its pid is free for the restore

	// Not detached: criu stays the restored task's parent and reaps it when it is killed.
	pidFile := filepath.Join(dir, "restored.pid")
	restore := criuCommand(ctx, criu, "restore", "-D", dir, "-o", "restore.log", "-v4", "--pidfile", pidFile)
	if err := restore.Start(); err != nil {
		return fail("start criu restore: %v", err)
	}
	restored := make(chan error, 1)
	go func() { restored <- restore.Wait() }()
	for {
		// The pid file is written before the tasks are caught and resumed: the log says when.
		if pid := readPid(pidFile); pid > 0 && restoreFinished(filepath.Join(dir, "restore.log")) {
			syscall.Kill(pid, syscall.SIGKILL)
			<-restored
			return CheckpointSupport{Known: true, Available: true, Took: time.Since(start)}
		}
		select {
		case err := <-restored:
			return fail("criu restore failed: %v%s", err, criuErrors(filepath.Join(dir, "restore.log")))
		case <-ctx.Done():
			<-restored // criuCommand killed its group
			return fail("criu restore did not finish in %s on this kernel%s", limit, logTail(filepath.Join(dir, "restore.log")))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// logTail is ": <the log's last line>", or "" for an empty log.
func logTail(log string) string {
	if last := lastLogLine(log); last != "" {
		return ": " + last
	}
	return ""
}

// criuCommand is a criu command in a process group of its own, which the end of ctx kills.
func criuCommand(ctx context.Context, criu string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, criu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// restoreFinished reports whether a criu restore log says the tasks were resumed.
func restoreFinished(log string) bool {
	data, err := os.ReadFile(log)
	return err == nil && strings.Contains(string(data), "Restore finished successfully")
}

// probeKey names what a probe's answer holds for: this boot and this CRIU binary.
func probeKey(criu string) string {
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	id := strings.TrimSpace(string(boot)) + "\n" + criu
	if fi, err := os.Stat(criu); err == nil {
		id += fmt.Sprintf("\n%d\n%d", fi.Size(), fi.ModTime().UnixNano())
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

func readProbeCache(path, key string) (CheckpointSupport, bool) {
	var s CheckpointSupport
	data, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(data, &s) != nil || s.Key != key {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			slog.Warn("checkpoint probe cache", "err", err)
		}
		return CheckpointSupport{}, false
	}
	s.Known = true
	return s, true
}
