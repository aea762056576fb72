package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/schollz/progressbar/v3"

	"tandem/api"
	"tandem/client"
	"tandem/internal/units"
)

// wait follows an operation to its end. On a terminal it draws a progress bar on stderr, labelled
// with what (e.g. "Launching c1") and the operation's own message; elsewhere it prints nothing, so
// that logs and pipes stay clean.
func (a *app) wait(ctx context.Context, c *client.Client, op *api.Operation, what string) (*api.Operation, error) {
	if op.Status == api.OpSuccess {
		return op, nil // finished within the request: nothing to wait for
	}
	var bar *progressbar.ProgressBar
	if a.tty {
		bar = progressbar.NewOptions(100,
			progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription(what),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(false),
			// No throttle: WaitOperation already paces updates, and a throttled redraw would drop
			// a new message while showing the new figure.
		)
		_ = bar.RenderBlank()
	}
	final, err := c.WaitOperation(ctx, op.ID, func(o *api.Operation) {
		if bar == nil {
			return
		}
		// Set first: Describe always redraws, so the line shows the new figure and message together.
		_ = bar.Set(o.Progress.Percent)
		bar.Describe(progressLabel(what, o.Progress))
	})
	if bar != nil {
		// Leave the line blank either way: the result (or the error line) says how it ended.
		_ = bar.Exit()
		_ = bar.Clear()
	}
	if err != nil && errors.Is(err, context.Canceled) {
		return nil, fmt.Errorf("interrupted: operation %s goes on in tandemd (see 'tandem operation show %s')", op.ID, op.ID)
	}
	return final, err
}

// progressLabel is the bar's text: what, then the operation's message; a stage that brings no
// message of its own shows its name and the bytes it moved ("Moving c1 to b: dump: 12MiB of 40MiB").
func progressLabel(what string, p api.Progress) string {
	switch {
	case p.Message != "":
		return what + ": " + p.Message
	case p.Stage == "":
		return what
	case p.TotalBytes > 0:
		return fmt.Sprintf("%s: %s: %s of %s", what, p.Stage, units.FormatSize(uint64(p.Bytes)), units.FormatSize(uint64(p.TotalBytes)))
	case p.Bytes > 0:
		return fmt.Sprintf("%s: %s: %s", what, p.Stage, units.FormatSize(uint64(p.Bytes)))
	}
	return what + ": " + p.Stage
}
