// Package api holds the wire types of the tandem REST API, shared by the daemon, the Go client and the CLI.
package api

import "time"

// Instance types.
const (
	TypeContainer = "container"
	TypeVM        = "vm"
)

// Power states a user can ask for (desired state).
const (
	PowerRunning = "running"
	PowerStopped = "stopped"
	PowerPaused  = "paused"
)

// Observed statuses, as reported by a driver.
const (
	StatusRunning = "Running"
	StatusStopped = "Stopped"
	StatusPaused  = "Paused"
	StatusError   = "Error"
	StatusUnknown = "Unknown"
)

// Devices maps a device name (eth0, root, data1) to its settings ("type": "nic"|"disk", ...).
type Devices map[string]map[string]string

// Instance is what GET /1.0/instances/NAME returns.
type Instance struct {
	Name  string `json:"name" yaml:"name"`
	Type  string `json:"type" yaml:"type"`
	Image string `json:"image" yaml:"image"`
	// ImageFingerprint is the image the instance was made from, whatever alias Image named.
	ImageFingerprint string            `json:"image_fingerprint,omitempty" yaml:"image_fingerprint,omitempty"`
	Config           map[string]string `json:"config" yaml:"config"`
	Devices          Devices           `json:"devices" yaml:"devices"`
	// DesiredPower is what the user last asked for; Status is what the driver reports.
	DesiredPower string    `json:"desired_power" yaml:"desired_power"`
	Status       string    `json:"status" yaml:"status"`
	StatusError  string    `json:"status_error,omitempty" yaml:"status_error,omitempty"`
	Driver       string    `json:"driver" yaml:"driver"`
	CreatedAt    time.Time `json:"created_at" yaml:"created_at"`
	// Operation is the id of the operation holding the instance, if any.
	Operation string `json:"operation,omitempty" yaml:"operation,omitempty"`
	// NICs are the instance's network interfaces with the MAC and address tandem assigned.
	NICs []NIC `json:"nics,omitempty" yaml:"nics,omitempty"`
	// Guest is what a running VM's guest agent reports (GET of one instance only).
	Guest *GuestInfo `json:"guest,omitempty" yaml:"guest,omitempty"`
	// Root is the instance's root disk on a storage pool (absent: the driver keeps it itself).
	Root *InstanceRoot `json:"root,omitempty" yaml:"root,omitempty"`
}

// InstanceRoot is where an instance's root disk is: a storage volume (TYPE/NAME) in a pool.
type InstanceRoot struct {
	Pool   string `json:"pool" yaml:"pool"`
	Volume string `json:"volume" yaml:"volume"`
	// Shared: the pool is a shared filesystem that other hosts mount too.
	Shared bool `json:"shared,omitempty" yaml:"shared,omitempty"`
}

// InstanceSnapshot is one snapshot of an instance (GET /1.0/instances/NAME/snapshots).
type InstanceSnapshot struct {
	Name      string    `json:"name" yaml:"name"`
	CreatedAt time.Time `json:"created_at" yaml:"created_at"`
	// Stateful: the running state (memory) was saved too; a restore resumes it.
	Stateful bool   `json:"stateful" yaml:"stateful"`
	Size     uint64 `json:"size,omitempty" yaml:"size,omitempty"` // the root disk's size then
}

// InstanceSnapshotsPost is the body of POST /1.0/instances/NAME/snapshots.
type InstanceSnapshotsPost struct {
	Name     string `json:"name"`
	Stateful bool   `json:"stateful,omitempty"` // containers: save the memory too (CRIU)
}

// GuestInfo is what the OS inside an instance says about itself.
type GuestInfo struct {
	Hostname string   `json:"hostname" yaml:"hostname"`
	OS       string   `json:"os" yaml:"os"`
	Kernel   string   `json:"kernel,omitempty" yaml:"kernel,omitempty"`
	IPs      []string `json:"ips" yaml:"ips"`
}

// NIC is one network interface of an instance.
type NIC struct {
	Name    string `json:"name" yaml:"name"`
	Network string `json:"network" yaml:"network"`
	MAC     string `json:"mac" yaml:"mac"`
	IPv4    string `json:"ipv4,omitempty" yaml:"ipv4,omitempty"`
}

// InstancesPost is the body of POST /1.0/instances.
type InstancesPost struct {
	Name    string            `json:"name"`
	Type    string            `json:"type"`
	Image   string            `json:"image"`
	Config  map[string]string `json:"config,omitempty"`
	Devices Devices           `json:"devices,omitempty"`
	// Start makes the create operation also start the instance (launch).
	Start bool `json:"start,omitempty"`
	// ExistingRoot takes the root volume TYPE/NAME that another host made on the shared pool the
	// root disk device names, instead of making one: both hosts' instances then share the disk,
	// and only one at a time can run.
	ExistingRoot bool `json:"existing_root,omitempty"`
}

// InstancePut is the body of PUT /1.0/instances/NAME: it replaces config and devices whole.
type InstancePut struct {
	Config  map[string]string `json:"config"`
	Devices Devices           `json:"devices"`
}

// InstancePatch is the body of PATCH /1.0/instances/NAME: config keys set to null are removed,
// others are set; devices given replace the device of that name, null removes it.
type InstancePatch struct {
	Config  map[string]*string           `json:"config,omitempty"`
	Devices map[string]map[string]string `json:"devices,omitempty"`
}

// State actions for PUT /1.0/instances/NAME/state.
const (
	ActionStart   = "start"
	ActionStop    = "stop"
	ActionRestart = "restart"
	ActionPause   = "pause"
	ActionResume  = "resume"
)

// InstanceStatePut is the body of PUT /1.0/instances/NAME/state.
type InstanceStatePut struct {
	Action string `json:"action"`
	// Timeout in seconds for a graceful stop before it is forced; 0 means the default.
	Timeout  int  `json:"timeout,omitempty"`
	Force    bool `json:"force,omitempty"`
	Stateful bool `json:"stateful,omitempty"`
}

// InstanceExecPost is the body of POST /1.0/instances/NAME/exec. The request must ask to upgrade the
// connection to a tandem-stream, over which stdin, stdout, stderr and the exit code travel.
type InstanceExecPost struct {
	Command     []string          `json:"command"`
	Environment map[string]string `json:"environment,omitempty"`
	Cwd         string            `json:"cwd,omitempty"`
	Interactive bool              `json:"interactive,omitempty"` // a terminal
	Rows        uint16            `json:"rows,omitempty"`
	Cols        uint16            `json:"cols,omitempty"`
}
