package client

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"

	"tandem/api"
)

// waitPoll is how long one /wait call may block on the server: short, so that progress shows while a
// slow operation runs.
const waitPoll = 1 * time.Second

// minPollInterval keeps WaitOperation from spinning against a daemon that answers /wait at once.
// A variable so that tests can shorten it.
var minPollInterval = 100 * time.Millisecond

// OperationError is returned by WaitOperation when an operation ended in Failure or Cancelled. Its
// message is the operation's own error, so that the CLI can print it as is.
type OperationError struct {
	ID      string
	Status  string // api.OpFailure or api.OpCancelled
	Message string
}

func (e *OperationError) Error() string {
	if e.Message != "" {
		return e.Message
	}
	if e.Status == api.OpCancelled {
		return "operation cancelled"
	}
	return "operation failed"
}

func operationPath(id string) string {
	return "/1.0/operations/" + url.PathEscape(id)
}

var errNoID = errors.New("operation id is empty")

// GetOperations lists the operations the daemon still knows about.
func (c *Client) GetOperations(ctx context.Context) ([]api.Operation, error) {
	var out []api.Operation
	if err := c.do(ctx, http.MethodGet, "/1.0/operations", nil, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// GetOperation returns one operation.
func (c *Client) GetOperation(ctx context.Context, id string) (*api.Operation, error) {
	if id == "" {
		return nil, errNoID
	}
	var out api.Operation
	if err := c.do(ctx, http.MethodGet, operationPath(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CancelOperation asks the daemon to cancel an operation; a 409 StatusError means it cannot be.
func (c *Client) CancelOperation(ctx context.Context, id string) (*api.Operation, error) {
	if id == "" {
		return nil, errNoID
	}
	var out api.Operation
	if err := c.do(ctx, http.MethodDelete, operationPath(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// WaitOperation waits until the operation is done. onProgress (may be nil) is called with the first
// state seen and then with every state that differs from the one before. On Success it returns the
// final operation and nil; on Failure or Cancelled it returns the final operation and an
// *OperationError carrying the operation's error. If ctx ends first, it returns ctx's error: the
// operation itself goes on in the daemon.
func (c *Client) WaitOperation(ctx context.Context, id string, onProgress func(*api.Operation)) (*api.Operation, error) {
	if id == "" {
		return nil, errNoID
	}
	q := url.Values{"timeout": {"1"}}
	var last *api.Operation
	for {
		start := time.Now()
		op, err := c.waitOnce(ctx, id, q)
		if err != nil {
			return nil, err
		}
		if op != nil {
			if onProgress != nil && (last == nil || changed(last, op)) {
				onProgress(op)
			}
			last = op
			if op.Done() {
				return op, opResult(op)
			}
		}
		if d := time.Since(start); d < minPollInterval {
			t := time.NewTimer(minPollInterval - d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
	}
}

// waitOnce does one /wait call. It bounds the call itself, so that a daemon that ignores ?timeout and
// holds the request until the end still lets us poll again instead of hanging with no progress; a
// nil operation with a nil error means "no news, ask again".
func (c *Client) waitOnce(ctx context.Context, id string, q url.Values) (*api.Operation, error) {
	callCtx, cancel := context.WithTimeout(ctx, waitPoll+15*time.Second)
	defer cancel()
	var op api.Operation
	err := c.do(callCtx, http.MethodGet, operationPath(id)+"/wait", q, nil, &op)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, nil
		}
		return nil, err
	}
	return &op, nil
}

func changed(a, b *api.Operation) bool {
	return a.Status != b.Status || a.Progress != b.Progress || a.Err != b.Err || !a.UpdatedAt.Equal(b.UpdatedAt)
}

// opResult maps a finished operation to the error WaitOperation returns.
func opResult(op *api.Operation) error {
	switch op.Status {
	case api.OpFailure, api.OpCancelled:
		return &OperationError{ID: op.ID, Status: op.Status, Message: op.Err}
	}
	return nil
}
