package qmp_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"tandem/internal/qmp"
	"tandem/internal/qmp/qmptest"
)

// testCtx bounds every test: a hang fails instead of running forever.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestDialReadsGreetingAndNegotiates(t *testing.T) {
	srv := qmptest.NewServer(t)
	srv.SetVersion(7, 2, 9)
	c, err := qmp.Dial(testCtx(t), srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ma, mi, mc := c.Version(); ma != 7 || mi != 2 || mc != 9 {
		t.Errorf("Version() = %d.%d.%d, want 7.2.9", ma, mi, mc)
	}
	if got := c.Capabilities(); !reflect.DeepEqual(got, []string{"oob"}) {
		t.Errorf("Capabilities() = %v", got)
	}
	if got := srv.Names(); !reflect.DeepEqual(got, []string{"qmp_capabilities"}) {
		t.Errorf("server received %v, want [qmp_capabilities]", got)
	}
}

func TestDialNoSocket(t *testing.T) {
	_, err := qmp.Dial(testCtx(t), filepath.Join(t.TempDir(), "absent.sock"))
	if err == nil {
		t.Fatal("Dial on a missing socket succeeded")
	}
}

// A peer that accepts but never greets (QEMU busy with another client).
func TestDialTimesOutWithoutGreeting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			time.Sleep(2 * time.Second)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = qmp.Dial(ctx, path)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial error = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Dial took %v after its deadline", d)
	}
}

func TestExecuteArgsAndResult(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("blockdev-add").Args(map[string]any{"driver": "file", "node-name": "f0", "filename": "/x"}),
		qmptest.Expect("query-status").Return(map[string]any{"running": false, "status": "paused"}),
	)
	c := srv.Dial(t)
	ctx := testCtx(t)
	if err := c.BlockdevAdd(ctx, map[string]any{"driver": "file", "node-name": "f0", "filename": "/x"}); err != nil {
		t.Fatal(err)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != qmp.StatePaused {
		t.Errorf("QueryStatus = %+v", st)
	}
}

func TestErrorReply(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("device_del").Fail("DeviceNotFound", "Device 'nope' not found"),
	)
	c := srv.Dial(t)
	err := c.Execute(testCtx(t), "device_del", map[string]any{"id": "nope"}, nil)
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		t.Fatalf("error %v (%T) is not a *qmp.Error", err, err)
	}
	if qe.Class != "DeviceNotFound" || qe.Desc != "Device 'nope' not found" {
		t.Errorf("got %+v", qe)
	}
	if !strings.Contains(err.Error(), "device_del") {
		t.Errorf("error %q does not name the command", err)
	}
}

// Many goroutines share one connection while events stream in between the
// replies: each caller must get its own reply.
func TestConcurrentExecuteWithInterleavedEvents(t *testing.T) {
	srv := qmptest.NewServer(t)
	srv.Handle("echo", qmptest.Expect("echo").
		ReplyFunc(func(args json.RawMessage) (any, error) { return args, nil }).
		EventBefore("TICK", map[string]any{"n": 1}).Event("TOCK", nil))
	srv.Handle("sync", qmptest.Expect("sync"))
	c := srv.Dial(t)
	ctx := testCtx(t)

	events, cancel := c.Subscribe("TICK", "TOCK")
	defer cancel()
	var got int
	counted := make(chan struct{})
	go func() {
		for range events {
			got++
		}
		close(counted)
	}()

	const workers, calls = 20, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*calls)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				want := fmt.Sprintf("%d-%d", w, i)
				var res struct{ V string }
				if err := c.Execute(ctx, "echo", map[string]any{"V": want}, &res); err != nil {
					errs <- err
					return
				}
				if res.V != want {
					errs <- fmt.Errorf("caller %s got reply %s", want, res.V)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The last TOCK follows the last echo reply; a further reply follows it.
	if err := c.Execute(ctx, "sync", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Close() // ends the subscription so the counter finishes
	<-counted
	if total := uint64(got) + c.DroppedEvents(); total != 2*workers*calls {
		t.Errorf("events received %d + dropped %d, want %d", got, c.DroppedEvents(), 2*workers*calls)
	}
}

// QEMU answers in order, but with out-of-band commands it need not: routing
// is by id alone. A hand-rolled peer answers in reverse.
func TestRepliesOutOfOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const n = 8
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		enc, dec := json.NewEncoder(conn), json.NewDecoder(conn)
		enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0}}, "capabilities": []string{}}})
		var reqs []map[string]json.RawMessage
		for len(reqs) < n {
			var r map[string]json.RawMessage
			if dec.Decode(&r) != nil {
				return
			}
			if string(r["execute"]) == `"qmp_capabilities"` {
				enc.Encode(map[string]any{"return": map[string]any{}, "id": r["id"]})
				continue
			}
			reqs = append(reqs, r)
		}
		for i := len(reqs) - 1; i >= 0; i-- {
			enc.Encode(map[string]any{"event": "X", "timestamp": map[string]int{"seconds": 1, "microseconds": 2}})
			enc.Encode(map[string]any{"return": reqs[i]["arguments"], "id": reqs[i]["id"]})
		}
		time.Sleep(time.Second) // keep the socket open until the client is done
	}()
	c, err := qmp.Dial(testCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res struct{ I int }
			if err := c.Execute(ctx, "echo", map[string]int{"I": i}, &res); err != nil {
				t.Error(err)
			} else if res.I != i {
				t.Errorf("call %d got reply %d", i, res.I)
			}
		}()
	}
	wg.Wait()
}

func TestContextCancelUnblocksCaller(t *testing.T) {
	srv := qmptest.NewServer(t,
		qmptest.Expect("query-status").Delay(300*time.Millisecond).Return(map[string]any{"status": "paused"}),
		qmptest.Expect("query-status").Return(map[string]any{"status": "running", "running": true}),
	)
	c := srv.Dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.QueryStatus(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("cancelled call returned after %v", d)
	}
	// The abandoned call's late reply must not reach the next caller.
	st, err := c.QueryStatus(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" {
		t.Errorf("second call got %+v, the first call's reply", st)
	}
}

func TestCloseFailsPendingAndEndsSubscribers(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.Expect("query-status").Delay(100*time.Millisecond).HangUp())
	c := srv.Dial(t)
	ctx := testCtx(t)
	events, _ := c.Subscribe()
	w := c.ExpectEvent(qmp.EventShutdown, nil)

	var wg sync.WaitGroup
	for range 5 { // one reaches the server; the others are still queued
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.QueryStatus(ctx)
			if !errors.Is(err, qmp.ErrClosed) || err.Error() != "qmp: connection closed" {
				t.Errorf("pending call error = %v, want qmp: connection closed", err)
			}
		}()
	}
	wg.Wait()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("Done not closed")
	}
	if _, ok := <-events; ok {
		t.Error("subscription channel still open")
	}
	if _, err := w.Wait(ctx); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Waiter error = %v, want ErrClosed", err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("Execute after close = %v", err)
	}
	if ch, _ := c.Subscribe(); ch != nil {
		if _, ok := <-ch; ok {
			t.Error("Subscribe after close gave an open channel")
		}
	}
}

func TestQuitTreatsHangUpAsSuccess(t *testing.T) {
	srv := qmptest.NewServer(t, qmptest.Expect("quit").HangUp())
	c := srv.Dial(t)
	if err := c.Quit(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after quit")
	}
}
