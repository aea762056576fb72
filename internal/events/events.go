// Package events fans out daemon events (lifecycle, operation) to any number of listeners.
package events

import (
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"tandem/api"
)

// Hub is a publish/subscribe point. A listener that does not keep up loses events rather than
// slowing the daemon down; it is told how many through Dropped.
type Hub struct {
	mu   sync.Mutex
	subs map[*Listener]struct{}
}

func NewHub() *Hub { return &Hub{subs: map[*Listener]struct{}{}} }

// Listener receives the events of the types it asked for.
type Listener struct {
	C       chan api.Event
	types   map[string]bool // empty: all
	hub     *Hub
	dropped int
}

// Subscribe returns a listener for the given types (none: all types).
func (h *Hub) Subscribe(types ...string) *Listener {
	l := &Listener{C: make(chan api.Event, 256), types: map[string]bool{}, hub: h}
	for _, t := range types {
		l.types[t] = true
	}
	h.mu.Lock()
	h.subs[l] = struct{}{}
	h.mu.Unlock()
	return l
}

// Close stops delivery and closes C.
func (l *Listener) Close() {
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	if _, ok := l.hub.subs[l]; ok {
		delete(l.hub.subs, l)
		close(l.C)
	}
}

// Dropped returns how many events this listener missed because it was slow.
func (l *Listener) Dropped() int {
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	return l.dropped
}

// Publish sends an event with metadata md (marshalled to JSON) to every interested listener.
func (h *Hub) Publish(eventType string, md any) {
	raw, err := json.Marshal(md)
	if err != nil {
		slog.Error("event metadata not encodable", "type", eventType, "err", err)
		return
	}
	ev := api.Event{Type: eventType, Timestamp: time.Now().UTC(), Metadata: raw}
	h.mu.Lock()
	defer h.mu.Unlock()
	for l := range h.subs {
		if len(l.types) > 0 && !l.types[eventType] {
			continue
		}
		select {
		case l.C <- ev:
		default:
			l.dropped++
		}
	}
}

// Lifecycle publishes a lifecycle event about an instance.
func (h *Hub) Lifecycle(action, instance string) {
	h.Publish(api.EventLifecycle, api.LifecycleEvent{Action: action, Source: "/1.0/instances/" + instance, Instance: instance})
}
