// Package agent is tandem's guest agent protocol: the guest side (Server, run by cmd/tandem-agent
// inside a VM) and the host side (Client, used by the VM driver), over one byte stream, a
// virtio-serial port in practice.
//
// # Wire format
//
// Each message is one JSON object (a Frame) on its own line, written as "\n" + JSON + "\n". Lines
// that do not parse are skipped, so a stream that starts mid-line (a host that reconnected while the
// guest was writing) resynchronises at the next newline. Byte payloads are base64 (encoding/json's
// []byte). Requests carry an id chosen by the host; replies and stream data carry the same id.
//
//	host -> guest                          guest -> host
//	hello{nonce}                           hello{nonce, version}   (a new nonce resets the session)
//	exec{id, exec}                         data{id, fd 1|2, data|eof} ... exit{id, code} | error{id}
//	data{id, fd 0, data|eof}  (stdin)      ack{id, fd 0}
//	signal{id, signal}, resize{id, rows, cols}, cancel{id}
//	info{id}                               info{id, info} | error{id}
//	push{id, file} data{id, fd 0}... eof   done{id} | error{id}
//	pull{id, file}                         file{id, file} data{id, fd 1}... eof done{id} | error{id}
//
// Flow control: the sender of a data stream may have at most Window data frames that the receiver
// has not acknowledged (one ack per frame, sent once the frame's bytes were written out), so one
// slow stream never stalls the others sharing the connection.
package agent

import "io"

// Version is the protocol version; the hello reply carries the guest's.
const Version = 1

// PortName is the virtio-serial port the agent listens on (qemucmd.AgentPortName).
const PortName = "org.tandem.agent.0"

// Flow control and framing limits.
const (
	Window    = 16       // unacknowledged data frames per stream
	ChunkSize = 32 << 10 // bytes per data frame
	maxLine   = 1 << 20  // longer lines are dropped as garbage
)

// Frame types.
const (
	tHello  = "hello"
	tExec   = "exec"
	tData   = "data"
	tAck    = "ack"
	tExit   = "exit"
	tError  = "error"
	tSignal = "signal"
	tResize = "resize"
	tCancel = "cancel"
	tInfo   = "info"
	tPush   = "push"
	tPull   = "pull"
	tFile   = "file"
	tDone   = "done"
)

// Frame is one protocol message; which fields are set depends on T.
type Frame struct {
	T       string      `json:"t"`
	ID      uint64      `json:"id,omitempty"`
	FD      int         `json:"fd,omitempty"`
	Data    []byte      `json:"data,omitempty"`
	EOF     bool        `json:"eof,omitempty"`
	Nonce   string      `json:"nonce,omitempty"`
	Version int         `json:"version,omitempty"`
	Exec    *ExecStart  `json:"exec,omitempty"`
	File    *FileHeader `json:"file,omitempty"`
	Info    *GuestInfo  `json:"info,omitempty"`
	Code    int         `json:"code,omitempty"`
	Error   string      `json:"error,omitempty"`
	Signal  int         `json:"signal,omitempty"`
	Rows    uint16      `json:"rows,omitempty"`
	Cols    uint16      `json:"cols,omitempty"`
}

// ExecStart is the wire form of an exec request.
type ExecStart struct {
	Cmd  []string `json:"cmd"`
	Env  []string `json:"env,omitempty"`
	Cwd  string   `json:"cwd,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
}

// FileHeader describes a pushed or pulled file.
type FileHeader struct {
	Path string `json:"path"`
	Mode uint32 `json:"mode,omitempty"` // permission bits
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	Size int64  `json:"size,omitempty"`
}

// GuestInfo is what the guest reports about itself.
type GuestInfo struct {
	Hostname     string              `json:"hostname"`
	OS           string              `json:"os"`     // PRETTY_NAME from os-release, else the kernel name
	Kernel       string              `json:"kernel"` // uname -r
	IPs          []string            `json:"ips"`    // global addresses, loopback and link-local left out
	Interfaces   map[string][]string `json:"interfaces,omitempty"`
	AgentVersion int                 `json:"agent_version"`
}

// WindowSize is a terminal size.
type WindowSize struct{ Rows, Cols uint16 }

// ExecRequest runs a command in the guest. Stdout and Stderr may be nil to discard; with TTY the
// command gets a terminal and its output all arrives on Stdout.
type ExecRequest struct {
	Cmd        []string
	Env        []string // added to the agent's default PATH, HOME and TERM
	Cwd        string
	TTY        bool
	Rows, Cols uint16 // initial terminal size with TTY
	Resize     <-chan WindowSize
	Stdin      io.Reader
	Stdout     io.Writer
	Stderr     io.Writer
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
