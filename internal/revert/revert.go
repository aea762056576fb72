// Package revert undoes a half-done operation: each step that makes a resource adds the step
// that removes it; on failure they run newest first, on success they are dropped.
//
//	r := revert.New()
//	defer r.Fail()
//	... make a thing; r.Add(func() error { return remove(thing) })
//	r.Success()
package revert

import "errors"

// Reverter holds the undo steps of one operation. The zero value is not usable: use New.
type Reverter struct {
	steps []func() error
	done  bool
}

// New returns an empty Reverter.
func New() *Reverter { return &Reverter{} }

// Add records an undo step; it runs before every step added earlier.
func (r *Reverter) Add(step func() error) { r.steps = append(r.steps, step) }

// Success drops the steps: the operation finished and keeps what it made.
func (r *Reverter) Success() { r.done = true; r.steps = nil }

// Fail runs the steps newest first, unless Success was called, and returns their errors joined.
// Every step runs even when an earlier one failed: a partial undo leaves less behind than none.
func (r *Reverter) Fail() error {
	if r.done {
		return nil
	}
	r.done = true
	var errs []error
	for i := len(r.steps) - 1; i >= 0; i-- {
		if err := r.steps[i](); err != nil {
			errs = append(errs, err)
		}
	}
	r.steps = nil
	return errors.Join(errs...)
}

// Clone hands the steps to a new Reverter and empties r, for an operation that gives its
// half-made resources to a later stage (which then owns their undo).
func (r *Reverter) Clone() *Reverter {
	c := &Reverter{steps: r.steps}
	r.steps = nil
	return c
}
