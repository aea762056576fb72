package logctx

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
)

// TB is the part of testing.TB a test logger needs (logctx does not import testing).
type TB interface {
	Helper()
	Log(args ...any)
	Context() context.Context
}

// ForTest returns a context (t's, so it ends with the test) whose logger writes to t.Log: the
// lines of code under test show with the test that failed, not on the process's stderr. Lines
// logged once the test is ending (its cleanups, goroutines it left) go to stderr.
func ForTest(t TB) context.Context {
	return WithLogger(t.Context(), slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
}

// testWriter hands each line slog writes to t.Log.
type testWriter struct {
	mu  sync.Mutex
	t   TB
	buf bytes.Buffer
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil { // no newline yet: keep it for the next write
			w.buf.Reset()
			w.buf.WriteString(line)
			return len(p), nil
		}
		if w.t.Context().Err() != nil { // the test is ending: t.Log would panic once it has ended
			os.Stderr.WriteString(line)
			continue
		}
		w.t.Log(strings.TrimSuffix(line, "\n"))
	}
}
