package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"tandem/api"
)

// mover moves one instance once and measures the move; it returns once the instance is idle
// again where it went, ready for the next move.
type mover interface {
	move(ctx context.Context) (sample, error)
}

// launchFlags is what `tandem launch busybox NAME` gets for each kind, on local storage.
var launchFlags = map[string][]string{
	"container": {"-c", "limits.memory=128MiB", "-d", "eth0,type=nic,network=lab"},
	"vm":        {"--vm", "-c", "limits.memory=256MiB", "-d", "eth0,type=nic,network=lab"},
}

// runKind runs one kind's local case, and its shared case on the pool named pool ("": none). Each
// tandem move is paired with one of the baseline's, the order alternating, so that both see the
// same load. It returns the cases' rows and then the baseline's, whose samples pool those taken
// next to either case.
func (l *lab) runKind(ctx context.Context, o options, kind, pool string, baseline func() (mover, error)) ([]*row, error) {
	var rows []*row
	plain := &row{kind: kind, runner: "plain"}
	cases := []string{"local", "shared"}
	if kind == "container" {
		cases = append(cases, "lazy") // local storage, post-copy memory
	}
	for _, storage := range cases {
		r := &row{kind: kind, storage: storage, runner: "tandem"}
		rows = append(rows, r)
		args := launchFlags[kind]
		if storage == "lazy" {
			// A privileged container: with vm.unprivileged_userfaultfd=0 (Debian's default) a user
			// namespace's restored tasks may not open a userfaultfd.
			args = append(append([]string(nil), args...), "-c", "security.privileged=true")
		}
		if storage == "shared" {
			if pool == "" {
				r.skipped = "shared storage: not supported by this build (skipped)"
				fmt.Printf("%s: %s\n", r.name(), r.skipped)
				continue
			}
			args = append(append([]string(nil), args...), "--storage", pool)
		}
		name := kind[:1] + "-" + storage
		fmt.Printf("%s: launching %s on host-a ...\n", r.name(), name)
		in, err := l.launch(ctx, name, args, o.settle)
		if err != nil {
			return nil, err
		}
		in.lazy = storage == "lazy"
		base, err := baseline()
		if err != nil {
			return nil, fmt.Errorf("%s baseline: %w", kind, err)
		}
	moves:
		for i := 0; i < o.n; i++ {
			steps := []struct {
				m mover
				r *row
			}{{in, r}, {base, plain}}
			if i%2 == 1 {
				steps[0], steps[1] = steps[1], steps[0]
			}
			for _, st := range steps {
				smp, err := st.m.move(ctx)
				if err != nil && st.r == r && in.lazy && i == 0 && strings.Contains(err.Error(), "lazy") {
					r.skipped = fmt.Sprintf("lazy pages not available here (skipped): %v", err)
					fmt.Printf("%s: %s\n", r.name(), r.skipped)
					break moves
				}
				if err != nil {
					return nil, fmt.Errorf("%s %s, move %d: %w", st.r.name(), st.r.runner, i+1, err)
				}
				st.r.samples = append(st.r.samples, smp)
				fmt.Printf("  %d  %-17s %-6s total %s  %s %s  sent %s  (%s)\n", i+1, st.r.name(), st.r.runner,
					secs(smp.total), pauseName(kind), secs(smp.pause), mib(smp.sent), smp.mode)
				if smp.qemu > 0 {
					fmt.Printf("     QEMU's own total-time %s\n", secs(smp.qemu))
				}
			}
		}
		if err := in.delete(ctx); err != nil {
			return nil, err
		}
	}
	return append(rows, plain), nil
}

// instance is one tandem instance of the lab and the host it is on.
type instance struct {
	l      *lab
	name   string
	at     int
	settle time.Duration
	lazy   bool // moves require lazy pages
}

// launch launches an instance on host-a and waits until it is up, has its address (DHCP is over)
// and has idled for settle.
func (l *lab) launch(ctx context.Context, name string, args []string, settle time.Duration) (*instance, error) {
	in := &instance{l: l, name: name, settle: settle}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := l.hosts[0].cli(lctx, append([]string{"launch", "busybox", name}, args...)...); err != nil {
		return nil, err
	}
	if err := in.waitReady(lctx); err != nil {
		return nil, err
	}
	if err := in.waitAddress(lctx); err != nil {
		return nil, err
	}
	return in, sleep(ctx, settle)
}

// move moves the instance live to the other host through the API and reads the operation's
// result: tandem's own figures (total_ms, freeze_ms or QEMU's downtime_ms, bytes_sent).
func (in *instance) move(ctx context.Context) (sample, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	from, to := in.l.hosts[in.at], in.l.hosts[1-in.at]
	req := api.InstanceMovePost{Target: to.name, Live: true}
	if in.lazy {
		req.Lazy = &in.lazy
	}
	op, err := from.c.MoveInstance(ctx, in.name, req)
	if err != nil {
		return sample{}, err
	}
	final, err := from.c.WaitOperation(ctx, op.ID, nil)
	if ctx.Err() != nil {
		// Interrupted: the move ends at once, and the instance stays where it was.
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		from.c.CancelOperation(cctx, op.ID)
		cancel()
	}
	if err != nil {
		return sample{}, fmt.Errorf("move %s from %s to %s: %w", in.name, from.name, to.name, err)
	}
	in.at = 1 - in.at
	var res api.MigrationResult
	if raw, err := json.Marshal(final.Metadata["result"]); err == nil {
		json.Unmarshal(raw, &res)
	}
	if res.TotalMillis == 0 {
		return sample{}, fmt.Errorf("move %s: the operation has no result: %v", in.name, final.Metadata)
	}
	s := sample{total: ms(res.TotalMillis), pause: ms(res.FreezeMillis + res.DowntimeMillis),
		sent: res.BytesSent, mode: res.Mode}
	if err := in.waitReady(ctx); err != nil {
		return s, err
	}
	return s, sleep(ctx, in.settle)
}

func ms(n int64) time.Duration { return time.Duration(n) * time.Millisecond }

// waitReady waits until `tandem exec NAME -- true` succeeds where the instance is: a container
// runs, a VM's guest agent answers.
func (in *instance) waitReady(ctx context.Context) error {
	h := in.l.hosts[in.at]
	return poll(ctx, 3*time.Minute, func() error {
		_, err := h.cli(ctx, "exec", in.name, "--", "true")
		return err
	})
}

// waitAddress waits until the instance holds the address tandem leased it.
func (in *instance) waitAddress(ctx context.Context) error {
	h := in.l.hosts[in.at]
	return poll(ctx, 90*time.Second, func() error {
		inst, err := h.c.GetInstance(ctx, in.name)
		if err != nil {
			return err
		}
		if len(inst.NICs) == 0 || inst.NICs[0].IPv4 == "" {
			return fmt.Errorf("%s has no address leased", in.name)
		}
		out, err := h.cli(ctx, "exec", in.name, "--", "ip", "-4", "addr", "show", "eth0")
		if err == nil && !strings.Contains(out, inst.NICs[0].IPv4+"/") {
			err = fmt.Errorf("%s does not hold %s yet: %s", in.name, inst.NICs[0].IPv4, out)
		}
		return err
	})
}

// delete removes the instance from the host it is on.
func (in *instance) delete(ctx context.Context) error {
	h := in.l.hosts[in.at]
	op, err := h.c.DeleteInstance(ctx, in.name, true)
	if err == nil {
		_, err = h.c.WaitOperation(ctx, op.ID, nil)
	}
	if err != nil {
		return fmt.Errorf("delete %s on %s: %w", in.name, h.name, err)
	}
	return nil
}

// poll calls try every half second until it succeeds, for at most within.
func poll(ctx context.Context, within time.Duration, try func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := try()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v: %w", within, err)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
