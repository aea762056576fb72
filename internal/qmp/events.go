package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Event is an asynchronous QMP event.
type Event struct {
	Name      string
	Data      json.RawMessage // the "data" object; may be empty
	Timestamp time.Time       // zero if QEMU had no clock
}

// Decode unmarshals the event's data into v.
func (e Event) Decode(v any) error {
	if len(e.Data) == 0 {
		return nil
	}
	return json.Unmarshal(e.Data, v)
}

// Event names a VM driver waits for.
const (
	EventShutdown         = "SHUTDOWN" // data: guest (bool), reason
	EventPowerdown        = "POWERDOWN"
	EventReset            = "RESET"
	EventStop             = "STOP"
	EventResume           = "RESUME"
	EventDeviceDeleted    = "DEVICE_DELETED" // data: device (id, absent for id-less children), path
	EventMigration        = "MIGRATION"      // data: status; needs the "events" migration capability
	EventMigrationPass    = "MIGRATION_PASS"
	EventBlockJobReady    = "BLOCK_JOB_READY"
	EventBlockJobComplete = "BLOCK_JOB_COMPLETED"
	EventBlockJobCancel   = "BLOCK_JOB_CANCELLED"
	EventJobStatusChange  = "JOB_STATUS_CHANGE"
	EventGuestPanicked    = "GUEST_PANICKED"
	EventBalloonChange    = "BALLOON_CHANGE"
)

// EventBuffer is how many events a subscription holds before further ones
// are dropped. Dropping keeps one stalled subscriber from stalling the
// reader, and with it every reply on the connection.
const EventBuffer = 64

type subscription struct {
	ch     chan Event
	names  map[string]bool  // nil: every event
	match  func(Event) bool // nil: every event that passes names
	once   bool             // end after the first delivery (waiters)
	closed bool             // guarded by Client.mu
}

func (s *subscription) close() {
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
}

// Subscribe delivers events whose name is in filter (every event if filter
// is empty), in arrival order, on a channel buffered to EventBuffer. When
// the buffer is full newer events are dropped and counted (DroppedEvents).
// The channel is closed by cancel or when the connection ends.
func (c *Client) Subscribe(filter ...string) (<-chan Event, func()) {
	s := &subscription{ch: make(chan Event, EventBuffer)}
	if len(filter) > 0 {
		s.names = make(map[string]bool, len(filter))
		for _, n := range filter {
			s.names[n] = true
		}
	}
	c.add(s)
	return s.ch, func() { c.remove(s) }
}

func (c *Client) add(s *subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		s.close()
		return
	}
	c.subs[s] = struct{}{}
}

func (c *Client) remove(s *subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.subs, s)
	s.close()
}

// DroppedEvents counts events dropped because a subscriber's buffer was full.
func (c *Client) DroppedEvents() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// dispatch runs on the reader goroutine. Sends never block, and they
// happen under mu so cancel cannot close a channel mid-send.
func (c *Client) dispatch(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for s := range c.subs {
		if s.names != nil && !s.names[ev.Name] {
			continue
		}
		if s.match != nil && !s.match(ev) {
			continue
		}
		select {
		case s.ch <- ev:
			if s.once {
				delete(c.subs, s)
				s.close() // the buffered event is still received first
			}
		default:
			c.dropped++
		}
	}
}

// Waiter catches one event. Create it with ExpectEvent before issuing the
// command that triggers the event, so an event arriving before Wait is
// called is kept rather than missed.
type Waiter struct {
	c    *Client
	s    *subscription
	name string
}

// ExpectEvent starts watching for the first event called name for which
// match (if non-nil) returns true. match runs on the reader goroutine with
// the client's lock held: keep it quick and do not call the Client from it.
// Call Wait or Cancel on the result.
func (c *Client) ExpectEvent(name string, match func(Event) bool) *Waiter {
	return c.expect([]string{name}, match)
}

// expect is ExpectEvent for the first of several event names.
func (c *Client) expect(names []string, match func(Event) bool) *Waiter {
	s := &subscription{ch: make(chan Event, 1), names: map[string]bool{}, match: match, once: true}
	for _, n := range names {
		s.names[n] = true
	}
	c.add(s)
	return &Waiter{c: c, s: s, name: strings.Join(names, " or ")}
}

// Wait returns the event, or an error when ctx ends or the connection
// closes first. Wait releases the Waiter.
func (w *Waiter) Wait(ctx context.Context) (Event, error) {
	defer w.Cancel()
	select {
	case ev, ok := <-w.s.ch:
		if !ok {
			if err := w.c.Err(); err != nil {
				return Event{}, err
			}
			return Event{}, fmt.Errorf("qmp: waiting for %s: cancelled", w.name)
		}
		return ev, nil
	case <-ctx.Done():
		return Event{}, fmt.Errorf("qmp: waiting for %s: %w", w.name, ctx.Err())
	}
}

// Cancel stops watching; safe to call more than once.
func (w *Waiter) Cancel() { w.c.remove(w.s) }

// WaitEvent waits for an event that arrives after the call. To catch an
// event caused by a command, use ExpectEvent or ExecuteAndWait instead.
func (c *Client) WaitEvent(ctx context.Context, name string, match func(Event) bool) (Event, error) {
	return c.ExpectEvent(name, match).Wait(ctx)
}

// ExecuteAndWait runs command and then waits for the event it triggers
// (watching starts before the command is sent, so the event cannot be
// missed). If the command fails, its error is returned without waiting.
func (c *Client) ExecuteAndWait(ctx context.Context, command string, args, result any, event string, match func(Event) bool) (Event, error) {
	w := c.ExpectEvent(event, match)
	if err := c.Execute(ctx, command, args, result); err != nil {
		w.Cancel()
		return Event{}, err
	}
	return w.Wait(ctx)
}
