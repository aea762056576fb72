package api

import "time"

// Image is what GET /1.0/images/REF returns.
type Image struct {
	Fingerprint    string    `json:"fingerprint" yaml:"fingerprint"`
	Format         string    `json:"format" yaml:"format"` // unified (rootfs) or disk (VM only)
	Size           int64     `json:"size" yaml:"size"`
	OS             string    `json:"os" yaml:"os"`
	Release        string    `json:"release,omitempty" yaml:"release,omitempty"`
	Architecture   string    `json:"architecture" yaml:"architecture"`
	Description    string    `json:"description,omitempty" yaml:"description,omitempty"`
	Types          []string  `json:"types" yaml:"types"`
	KernelCmdline  string    `json:"kernel_cmdline,omitempty" yaml:"kernel_cmdline,omitempty"`
	ShutdownSignal string    `json:"shutdown_signal,omitempty" yaml:"shutdown_signal,omitempty"`
	Firmware       string    `json:"firmware,omitempty" yaml:"firmware,omitempty"`
	Aliases        []string  `json:"aliases" yaml:"aliases"`
	UsedBy         []string  `json:"used_by" yaml:"used_by"`
	CreatedAt      time.Time `json:"created_at" yaml:"created_at"`
	ImportedAt     time.Time `json:"imported_at" yaml:"imported_at"`
}

// ImagesPost is the JSON body of POST /1.0/images: import from a URL or run a builder. (A raw upload
// is a POST with Content-Type application/octet-stream and the file as the body.)
type ImagesPost struct {
	URL    string `json:"url,omitempty"`
	SHA256 string `json:"sha256,omitempty"` // required with url
	// Build names an offline builder: busybox or debian.
	Build   string   `json:"build,omitempty"`
	Release string   `json:"release,omitempty"` // debian release
	Aliases []string `json:"aliases,omitempty"`
}

// ImageAliasesPost is the body of POST /1.0/images/aliases.
type ImageAliasesPost struct {
	Name   string `json:"name"`
	Target string `json:"target"` // fingerprint, prefix or alias
}

// Headers of a raw image upload.
const (
	HeaderImageAliases = "X-Tandem-Aliases" // comma-separated
	HeaderImageSHA256  = "X-Tandem-SHA256"
)

// InstancePublishPost is the body of POST /1.0/instances/NAME/publish.
type InstancePublishPost struct {
	Aliases []string `json:"aliases,omitempty"`
}
