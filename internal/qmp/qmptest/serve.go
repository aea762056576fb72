package qmptest

import (
	"encoding/json"
	"fmt"
	"time"

	"tandem/internal/qmp"
)

type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// serve speaks QMP on one connection. Commands are handled one at a time,
// in order, as QEMU's monitor does without out-of-band execution.
func (s *Server) serve(c *sconn) {
	defer s.wg.Done()
	defer func() {
		c.nc.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()

	s.mu.Lock()
	v := s.version
	s.mu.Unlock()
	greeting := map[string]any{"QMP": map[string]any{
		"version": map[string]any{
			"qemu":    map[string]int{"major": v[0], "minor": v[1], "micro": v[2]},
			"package": "qmptest",
		},
		"capabilities": []string{"oob"},
	}}
	if c.send(greeting) != nil {
		return
	}

	dec := json.NewDecoder(c.nc)
	negotiated := false
	for {
		var req request
		if err := dec.Decode(&req); err != nil {
			return
		}
		s.record(Command{Name: req.Execute, Args: req.Arguments})
		// The capabilities handshake, answered as QEMU 7.2 does.
		switch {
		case req.Execute == "qmp_capabilities" && !negotiated:
			negotiated = true
			c.send(reply(req.ID, "return", map[string]any{}))
			continue
		case req.Execute == "qmp_capabilities":
			c.send(reply(req.ID, "error", &qmp.Error{Class: "CommandNotFound",
				Desc: "Capabilities negotiation is already complete, command ignored"}))
			continue
		case !negotiated:
			c.send(reply(req.ID, "error", &qmp.Error{Class: "CommandNotFound",
				Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"}))
			continue
		}

		step, err := s.pick(req.Execute)
		if err != nil {
			s.t.Errorf("qmptest: %v", err)
			c.send(reply(req.ID, "error", &qmp.Error{Class: "CommandNotFound", Desc: "qmptest: " + err.Error()}))
			continue
		}
		if !s.run(c, step, req) {
			return
		}
	}
}

func (s *Server) record(cmd Command) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmds = append(s.cmds, cmd)
	close(s.changed)
	s.changed = make(chan struct{})
}

// pick finds the step for a command: the script's next step if it names
// this command, else a Handle fallback.
func (s *Server) pick(name string) (*Step, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next < len(s.script) && s.script[s.next].name == name {
		st := s.script[s.next]
		s.next++
		return st, nil
	}
	if st, ok := s.handlers[name]; ok {
		return st, nil
	}
	if s.next < len(s.script) {
		return nil, fmt.Errorf("got command %q, script expects %q next", name, s.script[s.next].name)
	}
	return nil, fmt.Errorf("got command %q after the script ended", name)
}

// run carries a step out; false means the connection is gone.
func (s *Server) run(c *sconn, st *Step, req request) bool {
	if st.check != nil {
		if err := st.check(req.Arguments); err != nil {
			s.t.Errorf("qmptest: %s: %v", req.Execute, err)
			return c.send(reply(req.ID, "error", &qmp.Error{Class: "GenericError", Desc: "qmptest: " + err.Error()})) == nil
		}
	}
	for _, ev := range st.before {
		if c.send(eventMessage(ev)) != nil {
			return false
		}
	}
	if st.delay > 0 {
		t := time.NewTimer(st.delay)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			return false
		}
	}
	if st.hangUp {
		s.HangUp()
		return false
	}
	if c.send(st.answer(req.ID, req.Arguments)) != nil {
		return false
	}
	for _, ev := range st.after {
		if c.send(eventMessage(ev)) != nil {
			return false
		}
	}
	return true
}

func eventMessage(ev event) map[string]any {
	now := time.Now()
	m := map[string]any{
		"event":     ev.name,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
	}
	if ev.data != nil {
		m["data"] = ev.data
	}
	return m
}
