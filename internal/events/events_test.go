package events

import (
	"encoding/json"
	"testing"
	"time"

	"tandem/api"
)

func TestFilterAndFanOut(t *testing.T) {
	h := NewHub()
	all := h.Subscribe()
	life := h.Subscribe(api.EventLifecycle)
	defer all.Close()
	defer life.Close()
	h.Publish(api.EventOperation, map[string]string{"id": "x"})
	h.Lifecycle("instance-started", "c1")

	if ev := recv(t, all); ev.Type != api.EventOperation {
		t.Fatalf("all: first event %s", ev.Type)
	}
	if ev := recv(t, all); ev.Type != api.EventLifecycle {
		t.Fatalf("all: second event %s", ev.Type)
	}
	ev := recv(t, life)
	var md api.LifecycleEvent
	json.Unmarshal(ev.Metadata, &md)
	if md.Action != "instance-started" || md.Instance != "c1" {
		t.Fatalf("lifecycle metadata %+v", md)
	}
	select {
	case ev := <-life.C:
		t.Fatalf("filtered listener got %s", ev.Type)
	default:
	}
}

func TestSlowListenerDoesNotBlock(t *testing.T) {
	h := NewHub()
	l := h.Subscribe()
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			h.Publish(api.EventOperation, i)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("publish blocked on a slow listener")
	}
	if l.Dropped() != 1000-cap(l.C) {
		t.Fatalf("dropped %d", l.Dropped())
	}
	l.Close()
	l.Close() // twice is harmless
}

func recv(t *testing.T, l *Listener) api.Event {
	t.Helper()
	select {
	case ev := <-l.C:
		return ev
	case <-time.After(2 * time.Second):
		t.Fatal("no event")
	}
	return api.Event{}
}
