package api

// Host is what GET /1.0/host returns: the machine and what it can run.
type Host struct {
	Hostname string       `json:"hostname" yaml:"hostname"`
	Kernel   string       `json:"kernel" yaml:"kernel"`
	Arch     string       `json:"arch" yaml:"arch"`
	CPU      HostCPU      `json:"cpu" yaml:"cpu"`
	Memory   HostMemory   `json:"memory" yaml:"memory"`
	Disk     HostDisk     `json:"disk" yaml:"disk"`
	KVM      HostKVM      `json:"kvm" yaml:"kvm"`
	Versions HostVersions `json:"versions" yaml:"versions"`
	Drivers  []DriverInfo `json:"drivers" yaml:"drivers"`
	// Allocated sums the limits of the instances on this host.
	Allocated HostAllocated `json:"allocated" yaml:"allocated"`
}

type HostCPU struct {
	Cores int    `json:"cores" yaml:"cores"`
	Model string `json:"model" yaml:"model"`
}

type HostMemory struct {
	Total     uint64 `json:"total" yaml:"total"`
	Available uint64 `json:"available" yaml:"available"`
}

type HostDisk struct {
	Path  string `json:"path" yaml:"path"`
	Total uint64 `json:"total" yaml:"total"`
	Free  uint64 `json:"free" yaml:"free"`
}

type HostKVM struct {
	Present bool   `json:"present" yaml:"present"`
	Usable  bool   `json:"usable" yaml:"usable"`
	Reason  string `json:"reason,omitempty" yaml:"reason,omitempty"`
}

// HostVersions lists the versions of the components found, empty when absent.
type HostVersions struct {
	QEMU string `json:"qemu" yaml:"qemu"`
	Runc string `json:"runc" yaml:"runc"`
	CRIU string `json:"criu" yaml:"criu"`
}

type HostAllocated struct {
	Instances int    `json:"instances" yaml:"instances"`
	Running   int    `json:"running" yaml:"running"`
	CPU       int    `json:"cpu" yaml:"cpu"`
	Memory    uint64 `json:"memory" yaml:"memory"`
	Disk      uint64 `json:"disk" yaml:"disk"`
}

// DriverInfo describes one registered driver.
type DriverInfo struct {
	Name         string   `json:"name" yaml:"name"`
	Type         string   `json:"type" yaml:"type"` // instance type it serves
	Version      string   `json:"version" yaml:"version"`
	Available    bool     `json:"available" yaml:"available"`
	Reason       string   `json:"reason,omitempty" yaml:"reason,omitempty"`
	Capabilities []string `json:"capabilities,omitempty" yaml:"capabilities,omitempty"`
	// Missing are capabilities the driver lacks on this host, with why (checkpoint: "unavailable
	// (criu dump did not finish …)" or "being probed").
	Missing map[string]string `json:"missing,omitempty" yaml:"missing,omitempty"`
}
