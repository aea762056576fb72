// Package errdefs holds the error kinds shared by every layer. Errors are wrapped with %w around one of
// these sentinels; the HTTP layer maps each kind to a status code in one place.
package errdefs

import (
	"errors"
	"fmt"
)

var (
	ErrInvalidArgument = errors.New("invalid argument")
	ErrNotFound        = errors.New("not found")
	ErrAlreadyExists   = errors.New("already exists")
	// ErrConflict: the request is valid but clashes with the current state (busy, running, in use).
	ErrConflict = errors.New("conflict")
	ErrTooLarge = errors.New("request too large")
	// ErrUnavailable: something this host lacks (a driver, a component) makes the request impossible here.
	ErrUnavailable = errors.New("unavailable")
	ErrCancelled   = errors.New("cancelled")
)

// Invalid returns an error of kind ErrInvalidArgument with a formatted message.
func Invalid(format string, args ...any) error { return kind(ErrInvalidArgument, format, args...) }

// NotFound returns an error of kind ErrNotFound.
func NotFound(format string, args ...any) error { return kind(ErrNotFound, format, args...) }

// Exists returns an error of kind ErrAlreadyExists.
func Exists(format string, args ...any) error { return kind(ErrAlreadyExists, format, args...) }

// Conflict returns an error of kind ErrConflict.
func Conflict(format string, args ...any) error { return kind(ErrConflict, format, args...) }

// Unavailable returns an error of kind ErrUnavailable.
func Unavailable(format string, args ...any) error { return kind(ErrUnavailable, format, args...) }

// kindError prints only its message; errors.Is finds both the kind and any error wrapped with %w.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

func kind(k error, format string, args ...any) error {
	return &kindError{kind: k, err: fmt.Errorf(format, args...)}
}
