package instance

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/network"
	"tandem/internal/storage"
	"tandem/internal/units"
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidateName checks an instance name: 1 to 63 of a-z, 0-9 and '-', not starting with '-'. Names become
// file names, cgroup names and host names, so nothing else is allowed.
func ValidateName(name string) error {
	if nameRE.MatchString(name) {
		return nil
	}
	shown := strconv.Quote(name)
	if len(shown) > 80 {
		shown = shown[:80] + "..."
	}
	switch {
	case name == "":
		return errdefs.Invalid("instance name is empty")
	case len(name) > 63:
		return errdefs.Invalid("instance name %s is %d characters long; the limit is 63", shown, len(name))
	case strings.HasPrefix(name, "-"):
		return errdefs.Invalid("instance name %s must not start with '-'", shown)
	default:
		return errdefs.Invalid("instance name %s may only contain a-z, 0-9 and '-'", shown)
	}
}

// Limits are the parsed resource limits of an instance.
type Limits struct {
	CPU       int    // vCPUs or the number of pinned CPUs; 0 = unset
	Memory    uint64 // bytes; 0 = unset
	Disk      uint64 // bytes; 0 = unset
	Processes int
}

type keyCheck func(value string) error

// configKeys lists every key a user may set. An unknown key is an error, never silently kept.
var configKeys = map[string]keyCheck{
	"limits.cpu":           checkCPU,
	"limits.cpu.allowance": checkAllowance,
	"limits.memory":        checkPositiveSize,
	"limits.memory.swap":   checkBool,
	"limits.disk":          checkDiskSize,
	"limits.processes":     checkPositiveInt,
	"security.privileged":  checkBool,
	"security.nesting":     checkBool,
	"boot.autostart":       checkBool,
	"image.os":             checkWord,
	"vm.machine":           checkOneOf("q35", "pc", "microvm"),
	"vm.firmware":          checkOneOf("bios", "uefi"),
	"windows.driver_iso":   checkAbsPath,
	// The container driver answers sysinfo(2) with the container's limits unless this is false.
	"security.syscalls.intercept.sysinfo": checkBool,
}

// Free-form namespaces: user metadata and environment variables for the instance's init.
var configPrefixes = []string{"user.", "environment."}

// ValidateConfig checks every key and value of an instance config.
func ValidateConfig(config map[string]string) error {
	keys := make([]string, 0, len(config))
	for k := range config {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := validateKey(k, config[k]); err != nil {
			return err
		}
	}
	return nil
}

func validateKey(key, value string) error {
	if strings.ContainsRune(key, 0) || strings.ContainsRune(value, 0) {
		return errdefs.Invalid("config key %q: NUL is not allowed", key)
	}
	if len(value) > 64<<10 {
		return errdefs.Invalid("config key %q: value is longer than 64KiB", key)
	}
	if check, ok := configKeys[key]; ok {
		if err := check(value); err != nil {
			return errdefs.Invalid("config key %q: %v", key, err)
		}
		return nil
	}
	for _, p := range configPrefixes {
		if strings.HasPrefix(key, p) && len(key) > len(p) && len(key) <= 256 {
			return nil
		}
	}
	if strings.HasPrefix(key, "volatile.") {
		return errdefs.Invalid("config key %q is set by tandem, not by users", key)
	}
	return errdefs.Invalid("unknown config key %q", key)
}

// ParseLimits reads the limits out of a validated config.
func ParseLimits(config map[string]string) Limits {
	var l Limits
	if v := config["limits.cpu"]; v != "" {
		l.CPU = cpuCount(v)
	}
	l.Memory, _ = units.ParseSize(config["limits.memory"])
	l.Disk, _ = units.ParseSize(config["limits.disk"])
	l.Processes, _ = strconv.Atoi(config["limits.processes"])
	return l
}

// checkCPU accepts a count ("2") or a pinned set ("0-3,6").
func checkCPU(v string) error {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 || n > 1024 {
			return fmt.Errorf("CPU count %d is out of range 1-1024", n)
		}
		return nil
	}
	if cpuCount(v) == 0 {
		return fmt.Errorf("%q is neither a CPU count nor a CPU set like 0-3,6", v)
	}
	return nil
}

// cpuCount returns the number of CPUs a count or set names, 0 if it is malformed.
func cpuCount(v string) int {
	if n, err := strconv.Atoi(v); err == nil {
		return n
	}
	seen := map[int]bool{}
	for _, part := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a || b > 4095 {
				return 0
			}
		}
		for i := a; i <= b; i++ {
			seen[i] = true
		}
	}
	return len(seen)
}

// checkAllowance accepts "50%" or a quota "25ms/100ms".
func checkAllowance(v string) error {
	if p, ok := strings.CutSuffix(v, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 {
			return fmt.Errorf("%q: a percentage must be 1%%-100%%", v)
		}
		return nil
	}
	q, period, ok := strings.Cut(v, "/")
	if !ok {
		return fmt.Errorf("%q: want a percentage (50%%) or a quota (25ms/100ms)", v)
	}
	for _, d := range []string{q, period} {
		n, err := strconv.Atoi(strings.TrimSuffix(d, "ms"))
		if !strings.HasSuffix(d, "ms") || err != nil || n < 1 {
			return fmt.Errorf("%q: want a quota like 25ms/100ms", v)
		}
	}
	return nil
}

func checkPositiveSize(v string) error {
	n, err := units.ParseSize(v)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("size must be more than 0")
	}
	return nil
}

// checkDiskSize refuses what no disk can be (0, under 4MiB, over 1EiB), as volume sizes are.
func checkDiskSize(v string) error {
	_, err := storage.ParseSize(v)
	return err
}

func checkPositiveInt(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return fmt.Errorf("%q is not a positive integer", v)
	}
	return nil
}

func checkBool(v string) error {
	if v != "true" && v != "false" {
		return fmt.Errorf("%q: want true or false", v)
	}
	return nil
}

var wordRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,64}$`)

func checkWord(v string) error {
	if !wordRE.MatchString(v) {
		return fmt.Errorf("%q: want 1-64 of letters, digits, '.', '_' and '-'", v)
	}
	return nil
}

var deviceNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// deviceKeys lists the keys each device type accepts.
var deviceKeys = map[string]map[string]keyCheck{
	"nic": {
		"network": checkWord, "name": network.CheckInterfaceName, "hwaddr": checkMAC,
		"ipv4.address": checkIPv4, "limits.ingress": checkRate, "limits.egress": checkRate,
	},
	"disk": {
		"pool": checkWord, "source": checkAny, "path": checkAny, "size": checkDiskSize,
		"readonly": checkBool, "boot.priority": checkPositiveInt,
	},
}

var macRE = regexp.MustCompile(`^([0-9a-f]{2}:){5}[0-9a-f]{2}$`)

func checkMAC(v string) error {
	if !macRE.MatchString(strings.ToLower(v)) {
		return fmt.Errorf("%q is not a MAC address like 00:16:3e:12:34:56", v)
	}
	return nil
}

func checkAny(string) error { return nil }

func checkOneOf(allowed ...string) keyCheck {
	return func(v string) error {
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return fmt.Errorf("%q: want one of %s", v, strings.Join(allowed, ", "))
	}
}

func checkAbsPath(v string) error {
	if !strings.HasPrefix(v, "/") || strings.Contains(v, "/../") || strings.HasSuffix(v, "/..") {
		return fmt.Errorf("%q: want an absolute path", v)
	}
	return nil
}

func checkIPv4(v string) error {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return fmt.Errorf("%q is not an IPv4 address", v)
	}
	return nil
}

func checkRate(v string) error {
	_, err := network.ParseRate(v)
	return err
}

// ValidateDevices checks device names, types and keys.
func ValidateDevices(devices api.Devices) error {
	names := make([]string, 0, len(devices))
	for n := range devices {
		names = append(names, n)
	}
	sort.Strings(names)
	roots := 0
	for _, name := range names {
		if err := ValidateDevice(name, devices[name]); err != nil {
			return err
		}
		if isRootDisk(devices[name]) {
			roots++
		}
	}
	if roots > 1 {
		return errdefs.Invalid("an instance has one root disk (path /); %d given", roots)
	}
	return nil
}

// ValidateDevice checks one device.
func ValidateDevice(name string, dev map[string]string) error {
	if !deviceNameRE.MatchString(name) {
		return errdefs.Invalid("device name %q: want 1-63 of letters, digits, '.', '_' and '-'", name)
	}
	if dev == nil {
		return errdefs.Invalid("device %q has no settings", name)
	}
	typ := dev["type"]
	keys, ok := deviceKeys[typ]
	if !ok {
		return errdefs.Invalid("device %q: unknown type %q (want nic or disk)", name, typ)
	}
	for k, v := range dev {
		if k == "type" {
			continue
		}
		check, ok := keys[k]
		if !ok {
			return errdefs.Invalid("device %q: unknown key %q for a %s device", name, k, typ)
		}
		if strings.ContainsRune(v, 0) {
			return errdefs.Invalid("device %q key %q: NUL is not allowed", name, k)
		}
		if err := check(v); err != nil {
			return errdefs.Invalid("device %q key %q: %v", name, k, err)
		}
	}
	if typ == "disk" && dev["path"] == "/" {
		for _, k := range []string{"source", "readonly", "boot.priority"} {
			if dev[k] != "" {
				return errdefs.Invalid("device %q: the root disk (path /) takes pool and size, not %s", name, k)
			}
		}
		return nil
	}
	if typ == "disk" && dev["source"] == "" {
		return errdefs.Invalid("device %q: a disk needs a source (the volume's name), or path / for the root disk", name)
	}
	if p := dev["path"]; typ == "disk" && p != "" && !strings.HasPrefix(p, "/") {
		return errdefs.Invalid("device %q: path %q must be absolute", name, p)
	}
	return nil
}
