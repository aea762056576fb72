package runc

import (
	"context"
	"strconv"
	"strings"
)

// CheckpointOpts are the CRIU options runc passes through, for checkpoint and restore alike.
type CheckpointOpts struct {
	ImagePath string
	WorkPath  string // CRIU logs (dump.log, restore.log) go here
	// LeaveRunning keeps the container running after the dump (a snapshot, not a stop).
	LeaveRunning bool
	// TCPEstablished dumps and restores established TCP connections.
	TCPEstablished bool
	// FileLocks carries flock/posix locks (a system container's daemons hold some).
	FileLocks bool
	// ManageCgroupsMode: "soft" (default), "full", "strict", or "ignore".
	ManageCgroupsMode string
	// EmptyNS lists namespaces (e.g. "network") CRIU creates empty instead of restoring.
	EmptyNS []string
	// LazyPages: a checkpoint leaves memory in the frozen tasks, served by a page server on
	// PageServer (host:port; CRIU binds the port on every address unless its configuration file
	// says otherwise) until a restore has pulled it; a restore takes memory from a `criu
	// lazy-pages` daemon listening in its work path.
	LazyPages  bool
	PageServer string
	// StatusFD (checkpoint, lazy) is runc's descriptor on which a NUL byte says the page server
	// is ready; 0 is none.
	StatusFD int
	// NoBreakpoints (checkpoint) has CRIU stop its parasite without hardware breakpoints
	// (compel's PTRACE_SYSCALL path, through CRIU's fault injection 130): the way out of a dump
	// that hung waiting for a breakpoint that never trapped.
	NoBreakpoints bool
}

// criuNoBreakpoints is CRIU's fault-injection code FI_NO_BREAKPOINTS.
const criuNoBreakpoints = "CRIU_FAULT=130"

func (o CheckpointOpts) args() []string {
	var a []string
	if o.ImagePath != "" {
		a = append(a, "--image-path", o.ImagePath)
	}
	if o.WorkPath != "" {
		a = append(a, "--work-path", o.WorkPath)
	}
	if o.TCPEstablished {
		a = append(a, "--tcp-established")
	}
	if o.FileLocks {
		a = append(a, "--file-locks")
	}
	if o.ManageCgroupsMode != "" {
		a = append(a, "--manage-cgroups-mode", o.ManageCgroupsMode)
	}
	for _, ns := range o.EmptyNS {
		a = append(a, "--empty-ns", ns)
	}
	if o.LazyPages {
		a = append(a, "--lazy-pages")
	}
	return a
}

// CheckpointArgs is the command line (without the runc binary) of a checkpoint.
func (r *Runc) CheckpointArgs(id string, o CheckpointOpts) []string {
	args := append([]string{"checkpoint"}, o.args()...)
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	if o.PageServer != "" {
		args = append(args, "--page-server", o.PageServer)
	}
	if o.StatusFD > 0 {
		args = append(args, "--status-fd", strconv.Itoa(o.StatusFD))
	}
	return append(args, id)
}

// Checkpoint dumps a running container with CRIU; unless LeaveRunning, it stops it. The end of
// ctx kills runc and the criu it runs (see runEnv).
func (r *Runc) Checkpoint(ctx context.Context, id string, o CheckpointOpts) error {
	_, err := r.runEnv(ctx, nil, CheckpointEnv(o), r.CheckpointArgs(id, o)...)
	return err
}

// CheckpointEnv is the environment a checkpoint command line started by the caller needs for o.
func CheckpointEnv(o CheckpointOpts) []string {
	if o.NoBreakpoints {
		return []string{criuNoBreakpoints}
	}
	return nil
}

// RestoreArgs is the command line that restores a container from a checkpoint, detached (its
// init is reparented to whoever runs it, if that is a subreaper).
func (r *Runc) RestoreArgs(id, bundle, pidFile, consoleSocket string, o CheckpointOpts) []string {
	args := append([]string{"restore", "--detach", "--bundle", bundle, "--pid-file", pidFile}, o.args()...)
	if consoleSocket != "" {
		args = append(args, "--console-socket", consoleSocket)
	}
	return r.Argv(append(args, id)...)
}

// ExecOpts describe a process to run in a container.
type ExecOpts struct {
	Args          []string
	Env           []string // KEY=VALUE, added to the container's process env
	Cwd           string
	TTY           bool
	ConsoleSocket string // with TTY and Detach: where runc sends the pty master
	Detach        bool
	PidFile       string
}

// ExecArgs is the command line that runs a process in a running container. runc's flags end at
// the container id: everything after it is the process's argv.
func (r *Runc) ExecArgs(id string, o ExecOpts) []string {
	args := []string{"exec"}
	if o.TTY {
		args = append(args, "--tty")
	}
	if o.Detach {
		args = append(args, "--detach")
	}
	if o.Cwd != "" {
		args = append(args, "--cwd", o.Cwd)
	}
	for _, e := range o.Env {
		args = append(args, "--env", e)
	}
	if o.ConsoleSocket != "" {
		args = append(args, "--console-socket", o.ConsoleSocket)
	}
	if o.PidFile != "" {
		args = append(args, "--pid-file", o.PidFile)
	}
	args = append(args, id)
	return r.Argv(append(args, o.Args...)...)
}

// IsNoCRIU reports whether a runc error says CRIU is missing.
func IsNoCRIU(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "criu") && strings.Contains(err.Error(), "executable file not found"))
}
