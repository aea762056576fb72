// Package runc drives the runc command line. It knows runc's flags and output formats and nothing
// about tandem: the container driver decides what to run, this package says it in runc's words.
package runc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ErrNotExist is returned (wrapped) when runc has no container of that id.
var ErrNotExist = errors.New("container does not exist")

// Runc is one runc binary with one state root.
type Runc struct {
	Path string // binary; "runc" finds it in PATH
	Root string // --root: where runc keeps its per-container state
	CRIU string // --criu: the criu binary for checkpoint/restore ("" = runc's default, "criu")
}

// Status values of runc state.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusPaused  = "paused"
	StatusStopped = "stopped"
)

// State is runc's view of a container (`runc state`).
type State struct {
	ID      string    `json:"id"`
	Pid     int       `json:"pid"`
	Status  string    `json:"status"`
	Bundle  string    `json:"bundle"`
	Created time.Time `json:"created"`
}

// Argv returns the full command line for a runc subcommand: binary, global flags, then args.
// JSON logs make errors parseable.
func (r *Runc) Argv(args ...string) []string {
	argv := []string{r.Path, "--root", r.Root, "--log-format", "json"}
	if r.CRIU != "" {
		argv = append(argv, "--criu", r.CRIU)
	}
	return append(argv, args...)
}

// Command returns an unstarted runc command.
func (r *Runc) Command(ctx context.Context, args ...string) *exec.Cmd {
	argv := r.Argv(args...)
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// run runs runc to completion and returns its stdout; a failure carries runc's error messages.
func (r *Runc) run(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	return r.runEnv(ctx, stdin, nil, args...)
}

// runEnv is run with extra environment variables (runc passes its environment on to criu).
// runc runs in a process group of its own, and the end of ctx kills the whole group: a criu
// that runc started (checkpoint, restore) hangs with its tasks seized, and killing runc alone
// would leave it there, still tracing them.
func (r *Runc) runEnv(ctx context.Context, stdin io.Reader, env []string, args ...string) ([]byte, error) {
	cmd := r.Command(ctx, args...)
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errOut
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// The group is dead once Cancel ran; this only bounds the wait for its output pipes.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return out.Bytes(), Error(args[0], errOut.Bytes(), err)
	}
	return out.Bytes(), nil
}

// Error turns runc's stderr (JSON log lines, or plain text) into an error; "does not exist"
// becomes ErrNotExist.
func Error(op string, stderr []byte, err error) error {
	var msgs []string
	sc := bufio.NewScanner(bytes.NewReader(stderr))
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		var entry struct{ Level, Msg string }
		if json.Unmarshal(line, &entry) == nil && entry.Msg != "" {
			if entry.Level == "error" || entry.Level == "fatal" {
				msgs = append(msgs, entry.Msg)
			}
			continue
		}
		if len(line) > 0 {
			msgs = append(msgs, string(line))
		}
	}
	msg := strings.Join(msgs, "; ")
	if msg == "" {
		msg = err.Error()
	}
	if strings.Contains(msg, "container does not exist") {
		return fmt.Errorf("runc %s: %w", op, ErrNotExist)
	}
	return fmt.Errorf("runc %s: %s", op, msg)
}

// Version returns the first line of `runc --version`.
func (r *Runc) Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, r.Path, "--version").Output()
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line), nil
}

// State returns runc's state of a container, or an error wrapping ErrNotExist.
func (r *Runc) State(ctx context.Context, id string) (*State, error) {
	out, err := r.run(ctx, nil, "state", id)
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("runc state: %w", err)
	}
	return &st, nil
}

// Start starts the user process of a created container.
func (r *Runc) Start(ctx context.Context, id string) error {
	_, err := r.run(ctx, nil, "start", id)
	return err
}

// Kill sends a signal (a name like "SIGUSR2", "KILL" or a number) to the container's init.
func (r *Runc) Kill(ctx context.Context, id, signal string) error {
	_, err := r.run(ctx, nil, "kill", id, signal)
	return err
}

// Delete removes a container's runc state and cgroup; force kills it first if it runs. A
// container runc does not know is not an error: delete is idempotent.
func (r *Runc) Delete(ctx context.Context, id string, force bool) error {
	args := []string{"delete"}
	if force {
		args = append(args, "--force")
	}
	_, err := r.run(ctx, nil, append(args, id)...)
	if errors.Is(err, ErrNotExist) {
		return nil
	}
	return err
}

// Pause freezes every process of the container (the cgroup freezer).
func (r *Runc) Pause(ctx context.Context, id string) error {
	_, err := r.run(ctx, nil, "pause", id)
	return err
}

// Resume thaws a paused container.
func (r *Runc) Resume(ctx context.Context, id string) error {
	_, err := r.run(ctx, nil, "resume", id)
	return err
}

// Update applies resources to a live container. runc reads zero as "unchanged": a limit is
// removed by sending -1.
func (r *Runc) Update(ctx context.Context, id string, res *specs.LinuxResources) error {
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	_, err = r.run(ctx, bytes.NewReader(data), "update", "--resources", "-", id)
	return err
}

// Stats are the figures of `runc events --stats`, which reads cgroup v1 or v2 alike.
type Stats struct {
	CPU struct {
		Usage struct {
			Total uint64 `json:"total"` // ns
		} `json:"usage"`
	} `json:"cpu"`
	Memory struct {
		Usage struct {
			Usage uint64 `json:"usage"`
			Limit uint64 `json:"limit"`
		} `json:"usage"`
		Cache uint64 `json:"cache"`
	} `json:"memory"`
	Pids struct {
		Current uint64 `json:"current"`
		Limit   uint64 `json:"limit"`
	} `json:"pids"`
}

// Stats reads a container's cgroup figures once.
func (r *Runc) Stats(ctx context.Context, id string) (*Stats, error) {
	out, err := r.run(ctx, nil, "events", "--stats", id)
	if err != nil {
		return nil, err
	}
	var ev struct {
		Type string `json:"type"`
		Data Stats  `json:"data"`
	}
	if err := json.Unmarshal(out, &ev); err != nil {
		return nil, fmt.Errorf("runc events: %w", err)
	}
	return &ev.Data, nil
}

// CreateArgs is the command line that creates a container (init waits for Start).
func (r *Runc) CreateArgs(id, bundle, pidFile, consoleSocket string) []string {
	args := []string{"create", "--bundle", bundle, "--pid-file", pidFile}
	if consoleSocket != "" {
		args = append(args, "--console-socket", consoleSocket)
	}
	return r.Argv(append(args, id)...)
}
