// Package testenv says what a test does when this host lacks something it needs.
//
// A component that scripts/setup.sh installs (runc, QEMU, CRIU, busybox, a guest kernel) is a
// skip with the reason on a developer's machine, and a failure under CI=true: CI runs setup
// first, so a missing component there means setup broke. A fact about the host that no setup
// changes (no root, a kernel on which CRIU cannot checkpoint) is a skip everywhere.
//
// Tests name what they need with Require; the checks live in components.go.
package testenv

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// CI reports whether the tests run under CI (CI=true).
func CI() bool { return os.Getenv("CI") == "true" }

// Missing skips t because a component setup installs is absent, or fails it under CI.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI=true: scripts/setup.sh installs it, so its absence is a failure)", msg)
	}
	t.Skip("skipping: " + msg)
}

// Unsupported skips t for a fact about this host that no setup changes, under CI too.
func Unsupported(t testing.TB, format string, args ...any) {
	t.Helper()
	t.Skip("skipping: " + fmt.Sprintf(format, args...))
}

// Context is the context of a test's calls into a real component: it ends at deadline d, so a
// hang fails the test with the component's own error instead of running into go test's
// timeout, and when the test ends.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
