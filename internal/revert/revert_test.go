package revert

import (
	"errors"
	"reflect"
	"testing"
)

func TestFailRunsStepsNewestFirstAndKeepsGoing(t *testing.T) {
	var order []int
	r := New()
	r.Add(func() error { order = append(order, 1); return nil })
	r.Add(func() error { order = append(order, 2); return errors.New("two") })
	r.Add(func() error { order = append(order, 3); return nil })
	err := r.Fail()
	if !reflect.DeepEqual(order, []int{3, 2, 1}) {
		t.Fatalf("order %v, want [3 2 1]", order)
	}
	if err == nil || err.Error() != "two" {
		t.Fatalf("err %v, want two", err)
	}
	if r.Fail() != nil || len(order) != 3 {
		t.Fatalf("a second Fail ran steps again: %v", order)
	}
}

func TestSuccessDropsSteps(t *testing.T) {
	ran := false
	r := New()
	r.Add(func() error { ran = true; return nil })
	r.Success()
	if err := r.Fail(); err != nil || ran {
		t.Fatalf("Fail after Success ran a step (ran=%v err=%v)", ran, err)
	}
}

func TestCloneMovesSteps(t *testing.T) {
	ran := 0
	r := New()
	r.Add(func() error { ran++; return nil })
	c := r.Clone()
	r.Fail()
	if ran != 0 {
		t.Fatal("the original still ran the handed-over step")
	}
	c.Fail()
	if ran != 1 {
		t.Fatalf("the clone ran %d steps, want 1", ran)
	}
}
