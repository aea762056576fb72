// Package server is tandem's REST API: handlers that decode and check requests, call the control plane,
// and answer JSON. Error kinds become HTTP codes here and nowhere else.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"tandem/api"
	"tandem/internal/errdefs"
)

// maxBody bounds request bodies; nothing in the API needs more.
const maxBody = 1 << 20

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	if err := enc.Encode(v); err != nil {
		slog.Debug("write response", "err", err)
	}
}

// writeOperation answers a slow call: 202 with the operation and where to follow it.
func writeOperation(w http.ResponseWriter, op *api.Operation) {
	w.Header().Set("Location", "/1.0/operations/"+op.ID)
	writeJSON(w, http.StatusAccepted, op)
}

// statusOf maps an error kind to its HTTP status.
func statusOf(err error) int {
	var maxErr *http.MaxBytesError
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, errdefs.ErrAlreadyExists), errors.Is(err, errdefs.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, errdefs.ErrTooLarge), errors.As(err, &maxErr):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errdefs.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, errdefs.ErrCancelled), errors.Is(err, context.Canceled):
		return http.StatusRequestTimeout
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	code := statusOf(err)
	if code == http.StatusInternalServerError {
		slog.Error("request failed", "err", err)
	}
	writeJSON(w, code, api.Error{Error: err.Error(), Code: code})
}

// decode reads one JSON object into v: bounded in size, unknown fields refused, nothing after it.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return fmt.Errorf("%w: request body is larger than %d bytes", errdefs.ErrTooLarge, maxBody)
		}
		if errors.Is(err, io.EOF) {
			return errdefs.Invalid("request body is empty")
		}
		return errdefs.Invalid("malformed request body: %v", err)
	}
	if dec.More() {
		return errdefs.Invalid("malformed request body: data after the JSON object")
	}
	return nil
}
