package api

import (
	"encoding/json"
	"time"
)

// Operation statuses.
const (
	OpPending   = "Pending"
	OpRunning   = "Running"
	OpSuccess   = "Success"
	OpFailure   = "Failure"
	OpCancelled = "Cancelled"
)

// Operation is a slow call's handle: every slow call answers 202 with one of these.
type Operation struct {
	ID          string    `json:"id" yaml:"id"`
	Description string    `json:"description" yaml:"description"`
	Status      string    `json:"status" yaml:"status"`
	Progress    Progress  `json:"progress" yaml:"progress"`
	Resources   []string  `json:"resources,omitempty" yaml:"resources,omitempty"` // e.g. /1.0/instances/c1
	Err         string    `json:"err,omitempty" yaml:"err,omitempty"`
	MayCancel   bool      `json:"may_cancel" yaml:"may_cancel"`
	CreatedAt   time.Time `json:"created_at" yaml:"created_at"`
	UpdatedAt   time.Time `json:"updated_at" yaml:"updated_at"`
	// Metadata carries an operation's result or extra figures (e.g. migration downtime).
	Metadata map[string]any `json:"metadata,omitempty" yaml:"metadata,omitempty"`
}

// Done reports whether the operation has finished, one way or another.
func (o *Operation) Done() bool {
	return o.Status == OpSuccess || o.Status == OpFailure || o.Status == OpCancelled
}

// Progress of an operation.
type Progress struct {
	Percent int    `json:"percent" yaml:"percent"`
	Message string `json:"message,omitempty" yaml:"message,omitempty"`
	// Stage names the phase of a multi-phase operation (a move: rootfs, dump, disk, memory, ...);
	// Bytes is what that phase has moved so far, out of TotalBytes when it is known.
	Stage      string `json:"stage,omitempty" yaml:"stage,omitempty"`
	Bytes      int64  `json:"bytes,omitempty" yaml:"bytes,omitempty"`
	TotalBytes int64  `json:"total_bytes,omitempty" yaml:"total_bytes,omitempty"`
}

// Event types on /1.0/events.
const (
	EventLifecycle = "lifecycle"
	EventOperation = "operation"
)

// Event is one line of the event stream (newline-delimited JSON).
type Event struct {
	Type      string          `json:"type"`
	Timestamp time.Time       `json:"timestamp"`
	Metadata  json.RawMessage `json:"metadata"`
}

// LifecycleEvent is the metadata of a lifecycle event.
type LifecycleEvent struct {
	Action   string `json:"action"` // instance-created, instance-started, ...
	Source   string `json:"source"` // /1.0/instances/c1
	Instance string `json:"instance,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
	Code  int    `json:"code"`
}
