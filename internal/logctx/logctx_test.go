package logctx

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// recorder is a TB that keeps what is logged.
type recorder struct {
	testing.TB
	lines []string
}

func (r *recorder) Log(args ...any) { r.lines = append(r.lines, fmt.Sprint(args...)) }

func TestFieldsAccumulateAndReachTheTest(t *testing.T) {
	r := &recorder{TB: t}
	ctx := With(ForTest(r), "op", "op-1")
	ctx = With(ctx, "instance", "c1")
	From(ctx).Info("started", "pid", 42)
	From(context.Background()).Info("not the test's") // slog.Default: never the recorder
	if len(r.lines) != 1 {
		t.Fatalf("lines %q", r.lines)
	}
	for _, want := range []string{"msg=started", "op=op-1", "instance=c1", "pid=42"} {
		if !strings.Contains(r.lines[0], want) {
			t.Errorf("line %q lacks %s", r.lines[0], want)
		}
	}
}

func TestFromWithoutLoggerIsDefault(t *testing.T) {
	if From(context.Background()) != slog.Default() {
		t.Error("From of a bare context is not slog.Default()")
	}
}

// A line logged after the test's context ended does not reach t.Log (which panics once the test
// has completed).
func TestAfterTheTestGoesToStderr(t *testing.T) {
	r := &recorder{TB: t}
	var ctx context.Context
	t.Run("inner", func(t *testing.T) {
		r.TB = t
		ctx = ForTest(r)
	})
	From(ctx).Info("late")
	if len(r.lines) != 0 {
		t.Fatalf("a late line reached the test: %q", r.lines)
	}
}
