package runc

import (
	"context"
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
}

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
	return a
}

// Checkpoint dumps a running container with CRIU; unless LeaveRunning, it stops it.
func (r *Runc) Checkpoint(ctx context.Context, id string, o CheckpointOpts) error {
	args := append([]string{"checkpoint"}, o.args()...)
	if o.LeaveRunning {
		args = append(args, "--leave-running")
	}
	_, err := r.run(ctx, nil, append(args, id)...)
	return err
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
