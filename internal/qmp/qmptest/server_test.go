package qmptest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/internal/qmp"
	"tandem/internal/qmp/qmptest"
)

// recorder catches the failures the server reports, so tests can check
// that a broken script is caught without failing themselves.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) failures() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestScriptInOrderWithHandler(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("stop"),
		qmptest.Expect("query-status").Return(map[string]any{"status": "paused"}),
	)
	n := 0
	srv.Handle("query-migrate", qmptest.Expect("query-migrate").ReplyFunc(func(json.RawMessage) (any, error) {
		n++ // handled one at a time per connection: no lock needed here
		if n < 3 {
			return map[string]any{"status": "active"}, nil
		}
		return map[string]any{"status": "completed"}, nil
	}))
	c := srv.Dial(t)
	if err := c.Stop(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var status string
	for status != qmp.MigrationCompleted {
		m, err := c.QueryMigrate(ctx(t)) // the handler answers while the script waits for query-status
		if err != nil {
			t.Fatal(err)
		}
		status = m.Status
	}
	if st, err := c.QueryStatus(ctx(t)); err != nil || st.Status != "paused" {
		t.Fatalf("QueryStatus = %+v, %v", st, err)
	}
	want := []string{"qmp_capabilities", "stop", "query-migrate", "query-migrate", "query-migrate", "query-status"}
	if got := srv.Names(); !reflect.DeepEqual(got, want) {
		t.Errorf("Names() = %v, want %v", got, want)
	}
	if cmds := srv.Commands(); cmds[1].Args != nil {
		t.Errorf("stop recorded with arguments %s", cmds[1].Args)
	}
	if p := srv.Pending(); len(p) != 0 {
		t.Errorf("Pending() = %v", p)
	}
}

func TestUnexpectedCommandAndBadArgsAreReported(t *testing.T) {
	r := &recorder{}
	t.Run("inner", func(t *testing.T) {
		r.TB = t
		srv := qmptest.NewServer(r,
			qmptest.Expect("device_del").Args(map[string]any{"id": "a"}),
			qmptest.Expect("never-sent"),
		)
		c := srv.Dial(t)
		var qe *qmp.Error
		if err := c.Cont(ctx(t)); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
			t.Errorf("unexpected command answered %v", err)
		}
		if err := c.Execute(ctx(t), "device_del", map[string]any{"id": "b"}, nil); !errors.As(err, &qe) || qe.Class != "GenericError" {
			t.Errorf("bad arguments answered %v", err)
		}
	})
	got := r.failures()
	for _, want := range []string{`got command "cont", script expects "device_del"`, `{"id":"b"}`, "never arrived: [never-sent]"} {
		if !strings.Contains(got, want) {
			t.Errorf("reported failures lack %q:\n%s", want, got)
		}
	}
}

// Before qmp_capabilities QEMU refuses everything; the fake does too.
func TestNegotiationEnforced(t *testing.T) {
	srv := qmptest.NewServer(t)
	conn, err := net.Dial("unix", srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	dec := json.NewDecoder(conn)
	var greeting map[string]json.RawMessage
	if err := dec.Decode(&greeting); err != nil || greeting["QMP"] == nil {
		t.Fatalf("greeting %v, %v", greeting, err)
	}
	fmt.Fprint(conn, `{"execute":"query-status","id":"x"}`)
	var resp struct {
		Error *qmp.Error
		ID    string
	}
	if err := dec.Decode(&resp); err != nil || resp.Error == nil || resp.ID != "x" {
		t.Fatalf("reply %+v, %v", resp, err)
	}
	if !strings.Contains(resp.Error.Desc, "qmp_capabilities") {
		t.Errorf("error %+v", resp.Error)
	}
}

func TestHangUpStopsAccepting(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.Expect("quit").HangUp())
	c := srv.Dial(t)
	if err := c.Execute(ctx(t), "quit", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("quit answered %v", err)
	}
	short, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := qmp.Dial(short, srv.Path()); err == nil {
		t.Error("dial after hang-up succeeded")
	}
}

func TestEmitWithoutClient(t *testing.T) {
	srv := qmptest.NewServer(t)
	if err := srv.Emit("STOP", nil); err == nil {
		t.Error("Emit with no client succeeded")
	}
}
