package qmptest

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"time"

	"tandem/internal/qmp"
)

// Step is one scripted exchange: the command the server expects and what
// it does in answer. Build it with Expect and chain the methods; a Step
// with no Return, Fail or ReplyFunc answers {"return": {}}.
type Step struct {
	name   string
	check  func(args json.RawMessage) error
	ret    any
	err    *qmp.Error
	fn     func(args json.RawMessage) (any, error)
	before []event
	after  []event
	delay  time.Duration
	hangUp bool
}

type event struct {
	name string
	data any
}

// Expect starts a step that expects the command name next.
func Expect(name string) *Step { return &Step{name: name} }

// Args requires the command's arguments to equal want as JSON (key order
// and number types do not matter). A nil want requires no arguments.
func (s *Step) Args(want any) *Step {
	s.check = func(got json.RawMessage) error { return equalJSON(got, want) }
	return s
}

// CheckArgs checks the arguments with fn; an error fails the test and is
// answered with a GenericError.
func (s *Step) CheckArgs(fn func(args json.RawMessage) error) *Step {
	s.check = fn
	return s
}

// Return answers with {"return": v}; v is marshalled to JSON.
func (s *Step) Return(v any) *Step {
	s.ret = v
	return s
}

// Fail answers with {"error": {"class": class, "desc": desc}}.
func (s *Step) Fail(class, desc string) *Step {
	s.err = &qmp.Error{Class: class, Desc: desc}
	return s
}

// ReplyFunc computes the answer from the arguments each time, for replies
// that change (a migration that progresses). A *qmp.Error return becomes
// that error reply; any other error a GenericError.
func (s *Step) ReplyFunc(fn func(args json.RawMessage) (any, error)) *Step {
	s.fn = fn
	return s
}

// EventBefore pushes an event before the reply, as QEMU does for STOP
// ahead of stop's reply.
func (s *Step) EventBefore(name string, data any) *Step {
	s.before = append(s.before, event{name, data})
	return s
}

// Event pushes an event after the reply (DEVICE_DELETED after device_del).
func (s *Step) Event(name string, data any) *Step {
	s.after = append(s.after, event{name, data})
	return s
}

// Delay holds the reply back by d. Like QEMU, the connection answers
// nothing else meanwhile.
func (s *Step) Delay(d time.Duration) *Step {
	s.delay = d
	return s
}

// HangUp closes the connection instead of replying, and stops accepting
// new ones: QEMU has died. EventBefore events are still sent first.
func (s *Step) HangUp() *Step {
	s.hangUp = true
	return s
}

// answer returns the reply object for a request with the given id.
func (s *Step) answer(id, args json.RawMessage) map[string]any {
	var ret any = map[string]any{}
	var err error
	switch {
	case s.fn != nil:
		ret, err = s.fn(args)
	case s.err != nil:
		err = s.err
	case s.ret != nil:
		ret = s.ret
	}
	if err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) {
			qe = &qmp.Error{Class: "GenericError", Desc: err.Error()}
		}
		return reply(id, "error", qe)
	}
	if ret == nil {
		ret = map[string]any{}
	}
	return reply(id, "return", ret)
}

func reply(id json.RawMessage, key string, v any) map[string]any {
	m := map[string]any{key: v}
	if len(id) > 0 {
		m["id"] = id
	}
	return m
}

// equalJSON compares raw JSON with want after normalising both.
func equalJSON(got json.RawMessage, want any) error {
	var g, w any
	if len(got) > 0 {
		if err := json.Unmarshal(got, &g); err != nil {
			return err
		}
	}
	if want != nil {
		raw, err := json.Marshal(want)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &w); err != nil {
			return err
		}
	}
	// No arguments and "arguments": {} mean the same to QEMU.
	if m, ok := g.(map[string]any); ok && len(m) == 0 {
		g = nil
	}
	if m, ok := w.(map[string]any); ok && len(m) == 0 {
		w = nil
	}
	if !reflect.DeepEqual(g, w) {
		wantRaw, _ := json.Marshal(w)
		return fmt.Errorf("arguments %s, want %s", got, wantRaw)
	}
	return nil
}
