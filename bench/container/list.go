package main

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"time"

	"tandem/api"
)

// medianOf5 is the median time of 5 runs of run.
func medianOf5(ctx context.Context, run func(context.Context) error) (time.Duration, error) {
	var d []time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		if err := run(ctx); err != nil {
			return 0, err
		}
		d = append(d, time.Since(start))
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[2], nil
}

// benchList adds stopped containers to tandem's running ones and times `tandem list --format
// json` over all of them, against `runc list --format json` over plain runc's running ones.
func benchList(ctx context.Context, t *tandem, r *plainRunc, running, stopped int) error {
	fmt.Printf("creating %d stopped tandem containers for the list ...\n", stopped)
	for i := 0; i < stopped; i++ {
		name := fmt.Sprintf("s%d", i)
		t.names = append(t.names, name)
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		op, err := t.c.CreateInstance(cctx, api.InstancesPost{Name: name, Type: api.TypeContainer, Image: "busybox"})
		if err == nil {
			_, err = t.c.WaitOperation(cctx, op.ID, nil)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
	}
	tl, err := medianOf5(ctx, func(ctx context.Context) error { return t.cli(ctx, "list", "--format", "json") })
	if err != nil {
		return err
	}
	rl, err := medianOf5(ctx, func(ctx context.Context) error {
		return exec.CommandContext(ctx, r.bin, "--root", r.root, "list", "--format", "json").Run()
	})
	if err != nil {
		return err
	}
	n := running + stopped
	fmt.Printf("\nlist, median of 5:\n")
	fmt.Printf("  tandem list --format json, %d containers (%d running): %7.1f ms, %.2f ms per container\n",
		n, running, ms(tl), ms(tl)/float64(n))
	fmt.Printf("  runc list --format json,   %d containers (all running): %7.1f ms, %.2f ms per container\n",
		running, ms(rl), ms(rl)/float64(running))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
