package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tandem/internal/errdefs"
)

// Instance types an image can support.
const (
	TypeContainer = "container"
	TypeVM        = "vm"
)

// Firmware values for disk images.
const (
	FirmwareBIOS = "bios"
	FirmwareUEFI = "uefi"
)

// MetadataFile is the name of the metadata member in an image tarball.
const MetadataFile = "metadata.json"

// maxMetadataSize bounds metadata.json so a hostile file cannot make us buffer gigabytes.
const maxMetadataSize = 1 << 20

// Metadata is what an image says about itself (metadata.json inside the tarball).
type Metadata struct {
	OS           string `json:"os"`
	Release      string `json:"release,omitempty"`
	Architecture string `json:"architecture"`
	Variant      string `json:"variant,omitempty"`
	Description  string `json:"description,omitempty"`
	// Types lists the instance types the image supports: "container", "vm".
	Types []string `json:"types"`
	// KernelCmdline is appended to the VM kernel command line (console, quiet, ...); root= is the driver's.
	KernelCmdline string `json:"kernel_cmdline,omitempty"`
	// ShutdownSignal is the signal that makes the image's init power off in a container.
	ShutdownSignal string `json:"shutdown_signal,omitempty"`
	// Firmware is "bios" or "uefi"; required for disk images.
	Firmware  string    `json:"firmware,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Supports says whether the image can run as the given instance type.
func (m *Metadata) Supports(instanceType string) bool { return slices.Contains(m.Types, instanceType) }

// StopSignal is the signal to send to the container's init for a clean poweroff.
func (m *Metadata) StopSignal() syscall.Signal {
	if s, err := ParseSignal(m.ShutdownSignal); err == nil && m.ShutdownSignal != "" {
		return s
	}
	return syscall.SIGTERM
}

// archAliases maps Debian (and Go) architecture names to the kernel names images use.
var archAliases = map[string]string{
	"x86_64": "x86_64", "amd64": "x86_64",
	"aarch64": "aarch64", "arm64": "aarch64",
	"armv7l": "armv7l", "armhf": "armv7l", "arm": "armv7l",
	"i686": "i686", "i386": "i686", "386": "i686",
	"ppc64le": "ppc64le", "ppc64el": "ppc64le",
	"s390x":       "s390x",
	"riscv64":     "riscv64",
	"loongarch64": "loongarch64", "loong64": "loongarch64",
}

// NormalizeArchitecture returns the kernel name for an architecture, or an error for an unknown one.
func NormalizeArchitecture(a string) (string, error) {
	if n, ok := archAliases[a]; ok {
		return n, nil
	}
	return "", errdefs.Invalid("unknown architecture %q", a)
}

// HostArchitecture is the kernel name of the architecture this binary runs on.
func HostArchitecture() string {
	if n, ok := archAliases[runtime.GOARCH]; ok {
		return n
	}
	return runtime.GOARCH
}

// debianArch is the Debian name for a kernel architecture name (for debootstrap --arch).
func debianArch(a string) string {
	switch a {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	case "armv7l":
		return "armhf"
	case "i686":
		return "i386"
	case "ppc64le":
		return "ppc64el"
	}
	return a
}

var wordRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+~-]{0,63}$`)

// ParseMetadata decodes and validates metadata.json. Errors are errdefs.Invalid.
func ParseMetadata(data []byte) (*Metadata, error) {
	var m Metadata
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, errdefs.Invalid("%s: invalid JSON: %v", MetadataFile, err)
	}
	if dec.More() {
		return nil, errdefs.Invalid("%s: trailing data after the JSON object", MetadataFile)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks the fields and normalises the architecture name.
func (m *Metadata) Validate() error {
	bad := func(format string, args ...any) error {
		return errdefs.Invalid("%s: "+format, append([]any{MetadataFile}, args...)...)
	}
	if !wordRE.MatchString(m.OS) {
		return bad("os %q must be 1-64 characters of letters, digits and ._+~-", m.OS)
	}
	for name, v := range map[string]string{"release": m.Release, "variant": m.Variant} {
		if v != "" && !wordRE.MatchString(v) {
			return bad("%s %q must be 1-64 characters of letters, digits and ._+~-", name, v)
		}
	}
	arch, err := NormalizeArchitecture(m.Architecture)
	if err != nil {
		return bad("%v", err)
	}
	m.Architecture = arch
	if len(m.Types) == 0 {
		return bad("types is empty: list \"container\" and/or \"vm\"")
	}
	seen := map[string]bool{}
	for _, t := range m.Types {
		if t != TypeContainer && t != TypeVM {
			return bad("unknown instance type %q (want \"container\" or \"vm\")", t)
		}
		if seen[t] {
			return bad("instance type %q listed twice", t)
		}
		seen[t] = true
	}
	if m.ShutdownSignal != "" {
		if _, err := ParseSignal(m.ShutdownSignal); err != nil {
			return bad("shutdown_signal: %v", err)
		}
	}
	if m.Firmware != "" && m.Firmware != FirmwareBIOS && m.Firmware != FirmwareUEFI {
		return bad("firmware %q must be \"bios\" or \"uefi\"", m.Firmware)
	}
	if len(m.KernelCmdline) > 2048 || strings.ContainsAny(m.KernelCmdline, "\x00\n\r") {
		return bad("kernel_cmdline must be one line of at most 2048 bytes")
	}
	if len(m.Description) > 1024 {
		return bad("description is longer than 1024 bytes")
	}
	return nil
}

// validateFor checks what depends on the archive's format (known only after reading the members).
func (m *Metadata) validateFor(f Format) error {
	if f == FormatDisk {
		if len(m.Types) != 1 || m.Types[0] != TypeVM {
			return errdefs.Invalid("%s: a disk image supports only the \"vm\" type, not %q", MetadataFile, m.Types)
		}
		if m.Firmware == "" {
			return errdefs.Invalid("%s: a disk image must set firmware to \"bios\" or \"uefi\"", MetadataFile)
		}
	}
	return nil
}

var namedSignals = map[string]syscall.Signal{
	"SIGHUP": syscall.SIGHUP, "SIGINT": syscall.SIGINT, "SIGQUIT": syscall.SIGQUIT,
	"SIGTERM": syscall.SIGTERM, "SIGUSR1": syscall.SIGUSR1, "SIGUSR2": syscall.SIGUSR2,
	"SIGPWR": syscall.SIGPWR, "SIGKILL": syscall.SIGKILL,
}

// Real-time signal bounds as user space sees them: glibc keeps 32 and 33 for itself, and systemd's
// "SIGRTMIN+3" means 37.
const (
	sigRTMin = 34
	sigRTMax = 64
)

// ParseSignal turns "SIGTERM", "TERM", "SIGRTMIN+3" or "SIGRTMAX-2" into a signal number.
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if !strings.HasPrefix(n, "SIG") {
		n = "SIG" + n
	}
	if s, ok := namedSignals[n]; ok {
		return s, nil
	}
	offset := func(base int, rest string, sign int) (syscall.Signal, error) {
		off := 0
		if rest != "" {
			v, err := strconv.Atoi(rest)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("invalid signal %q", name)
			}
			off = v
		}
		s := base + sign*off
		if s < sigRTMin || s > sigRTMax {
			return 0, fmt.Errorf("signal %q out of range", name)
		}
		return syscall.Signal(s), nil
	}
	switch {
	case n == "SIGRTMIN":
		return offset(sigRTMin, "", 1)
	case strings.HasPrefix(n, "SIGRTMIN+"):
		return offset(sigRTMin, n[len("SIGRTMIN+"):], 1)
	case n == "SIGRTMAX":
		return offset(sigRTMax, "", -1)
	case strings.HasPrefix(n, "SIGRTMAX-"):
		return offset(sigRTMax, n[len("SIGRTMAX-"):], -1)
	}
	return 0, fmt.Errorf("unknown or unsupported signal %q", name)
}

var aliasRE = regexp.MustCompile(`^[a-z0-9_][a-z0-9._-]{0,62}$`)

// ValidateAlias checks an alias name: 1-63 characters of a-z 0-9 - . _ not starting with '.' or '-'.
func ValidateAlias(name string) error {
	if !aliasRE.MatchString(name) {
		return errdefs.Invalid("invalid alias %q: use 1-63 characters of a-z, 0-9, '-', '.', '_', not starting with '.' or '-'", name)
	}
	if isHex(name) && len(name) >= 12 {
		// It would shadow fingerprint-prefix lookups.
		return errdefs.Invalid("invalid alias %q: it looks like a fingerprint", name)
	}
	return nil
}

func isHex(s string) bool {
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != ""
}
