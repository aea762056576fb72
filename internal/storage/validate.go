package storage

import (
	"regexp"
	"strconv"
	"strings"

	"tandem/internal/errdefs"
	"tandem/internal/units"
)

// Pool names follow instance names (they become directory and file names next to each other).
var poolNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Volume and snapshot names: instance-name rules plus '.' and '_', up to 80 characters so that a
// sha256 fingerprint with a suffix fits. The first character is a letter or digit, so "." and ".." are impossible,
// and '/' and '@' (used in refs and snapshot paths) never appear.
var volNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,79}$`)

func quoted(s string) string {
	q := strconv.Quote(s)
	if len(q) > 80 {
		q = q[:80] + "..."
	}
	return q
}

// ValidatePoolName checks a pool name: 1 to 63 of a-z, 0-9 and '-', not starting with '-'.
func ValidatePoolName(name string) error {
	if poolNameRE.MatchString(name) {
		return nil
	}
	return nameError("pool", name, 63, "a-z, 0-9 and '-'")
}

// ValidateVolumeName checks a volume or snapshot name: 1 to 80 of a-z, 0-9, '-', '.' and '_',
// starting with a letter or digit.
func ValidateVolumeName(what, name string) error {
	if volNameRE.MatchString(name) {
		return nil
	}
	return nameError(what, name, 80, "a-z, 0-9, '-', '.' and '_'")
}

func nameError(what, name string, max int, allowed string) error {
	switch {
	case name == "":
		return errdefs.Invalid("%s name is empty", what)
	case len(name) > max:
		return errdefs.Invalid("%s name %s is %d characters long; the limit is %d", what, quoted(name), len(name), max)
	case !isAlnum(name[0]):
		return errdefs.Invalid("%s name %s must start with a letter or digit", what, quoted(name))
	default:
		return errdefs.Invalid("%s name %s may only contain %s", what, quoted(name), allowed)
	}
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func validType(t string) bool {
	return t == TypeCustom || t == TypeContainer || t == TypeVM || t == TypeImage
}

// parseRef splits "TYPE/NAME" (or a bare NAME: a custom volume) and validates both parts.
func parseRef(ref string) (typ, name string, err error) {
	typ, name = TypeCustom, ref
	if i := strings.IndexByte(ref, '/'); i >= 0 {
		typ, name = ref[:i], ref[i+1:]
		if !validType(typ) {
			return "", "", errdefs.Invalid("volume %s: unknown volume type %s (custom, container, vm, image)", quoted(ref), quoted(typ))
		}
	}
	if err := ValidateVolumeName("volume", name); err != nil {
		return "", "", err
	}
	return typ, name, nil
}

// ParseSize parses a user's volume size ("10GiB"), refusing what no volume can be.
func ParseSize(s string) (uint64, error) {
	n, err := units.ParseSize(s)
	if err != nil {
		return 0, errdefs.Invalid("%v", err)
	}
	return n, checkSize(n)
}

// checkSize refuses sizes no volume can have: 0, below MinSize, above MaxSize.
func checkSize(n uint64) error {
	switch {
	case n == 0:
		return errdefs.Invalid("a volume size of 0 is impossible")
	case n < MinSize:
		return errdefs.Invalid("size %s is too small; the minimum is %s", units.FormatSize(n), units.FormatSize(MinSize))
	case n > MaxSize:
		return errdefs.Invalid("size %s is larger than 1EiB: a typo?", units.FormatSize(n))
	}
	return nil
}

// roundSize rounds up to whole 4 KiB blocks, which every format here can hold exactly.
func roundSize(n uint64) uint64 { return (n + 4095) &^ 4095 }

// fitsFree refuses a size that the pool cannot hold now (thin formats included: over-committing at
// create time is how pools fill up behind the operator's back).
func fitsFree(pool string, need, free uint64) error {
	if need > free {
		return errdefs.Invalid("pool %q has %s free; %s does not fit", pool, units.FormatSize(free), units.FormatSize(need))
	}
	return nil
}
