package driver

import (
	"context"
	"io"
)

// TermSize is a terminal's size.
type TermSize struct {
	Rows, Cols uint16
}

// ExecRequest is a command to run inside a running instance.
type ExecRequest struct {
	Cmd []string
	Env []string // KEY=VALUE, added to the instance's environment
	Cwd string   // default "/"
	// TTY runs the command on a terminal: Stdout gets its output (stderr included), Stdin is typed
	// into it, Resize changes its size.
	TTY    bool
	Size   TermSize
	Resize <-chan TermSize
	Stdin  io.Reader // nil: empty
	Stdout io.Writer // nil: discarded
	Stderr io.Writer // nil: discarded (unused with TTY)
}

// Execer runs commands in running instances. The exit code is the command's (128+n if signal n
// killed it); err is set only when the command could not be run.
type Execer interface {
	Exec(ctx context.Context, h *Handle, req ExecRequest) (exitCode int, err error)
}

// Consoler attaches to an instance's console (a container's init terminal, a VM's serial port).
type Consoler interface {
	Console(ctx context.Context, h *Handle) (io.ReadWriteCloser, error)
	// ConsoleLog returns what the console printed so far, kept by the daemon side.
	ConsoleLog(ctx context.Context, h *Handle) (io.ReadCloser, error)
}

// GuestInfo is what an instance's OS says about itself (a VM's guest agent).
type GuestInfo struct {
	Hostname string
	OS       string
	Kernel   string
	IPs      []string
}

// GuestInfoer reports what the guest says about itself.
type GuestInfoer interface {
	GuestInfo(ctx context.Context, h *Handle) (GuestInfo, error)
}

// FileOpts are a pushed file's mode and owner.
type FileOpts struct {
	Mode     uint32 // permission bits; 0 means 0644
	UID, GID int
}

// FileInfo describes a pulled file.
type FileInfo struct {
	Mode     uint32
	UID, GID int
	Size     int64
}

// Filer copies files into and out of a running instance.
type Filer interface {
	PushFile(ctx context.Context, h *Handle, path string, r io.Reader, opts FileOpts) error
	PullFile(ctx context.Context, h *Handle, path string, w io.Writer) (FileInfo, error)
}
