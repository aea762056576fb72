// Package progress carries a progress reporter through a context, so that a driver or storage call deep
// inside an operation can report how far it got without knowing about operations.
package progress

import "context"

// Func receives a percentage (0-100) and a short message.
type Func func(percent int, message string)

type key struct{}

// With returns a context whose Report calls f.
func With(ctx context.Context, f Func) context.Context {
	return context.WithValue(ctx, key{}, f)
}

// Report sends progress to the reporter in ctx, if any.
func Report(ctx context.Context, percent int, message string) {
	if f, ok := ctx.Value(key{}).(Func); ok && f != nil {
		if percent < 0 {
			percent = 0
		}
		if percent > 100 {
			percent = 100
		}
		f(percent, message)
	}
}
