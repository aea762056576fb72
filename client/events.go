package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"tandem/api"
)

// ErrEventStreamClosed is returned by GetEvents when the daemon ends the stream (it never does on its
// own, so this means it shut down or dropped us).
var ErrEventStreamClosed = errors.New("event stream closed by tandemd")

// GetEvents follows the event stream, calling fn with each event of the given types (all types when
// types is empty) in order. It returns when ctx ends (ctx's error), when fn returns an error (that
// error, unchanged, so a caller can stop with its own sentinel), or when the stream breaks.
func (c *Client) GetEvents(ctx context.Context, types []string, fn func(api.Event) error) error {
	var q url.Values
	if len(types) > 0 {
		q = url.Values{"type": {strings.Join(types, ",")}}
	}
	resp, err := c.send(ctx, http.MethodGet, "/1.0/events", q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	sc := bufio.NewScanner(resp.Body)
	// A line bigger than this is a broken server: stop rather than grow without bound.
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue // keep-alive
		}
		var ev api.Event
		// Unmarshal copies Metadata out of the scanner's buffer, so ev stays valid after the next Scan.
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("invalid event from tandemd: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("event larger than %d bytes from tandemd", maxEventLine)
		}
		return fmt.Errorf("reading events: %w", err)
	}
	return ErrEventStreamClosed
}
