// Package logctx carries a logger in the context (containerd's log.G(ctx)), so that a line says
// which operation and which instance wrote it: the operations runner adds the operation id, the
// instance manager the instance, and code below logs with From(ctx).
package logctx

import (
	"context"
	"log/slog"
)

type key struct{}

// With returns ctx whose logger also carries args (slog's key-value pairs or attrs).
func With(ctx context.Context, args ...any) context.Context {
	return context.WithValue(ctx, key{}, From(ctx).With(args...))
}

// WithLogger returns ctx carrying l (a test's logger, say).
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, key{}, l)
}

// From returns ctx's logger, or slog.Default() when it carries none.
func From(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(key{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}
