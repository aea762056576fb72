package daemon

import (
	"errors"
	"testing"
)

func TestVMUser(t *testing.T) {
	exists := func(string) error { return nil }
	missing := func(string) error { return errors.New("unknown user") }
	for _, c := range []struct {
		flag   string
		lookup func(string) error
		want   string
	}{
		{"", exists, DefaultVMUser},
		{"", missing, ""}, // root, with a warning
		{"root", exists, ""},
		{"nobody", missing, "nobody"}, // explicit: the VM driver refuses it if it does not exist
	} {
		if got := vmUser(c.flag, c.lookup); got != c.want {
			t.Errorf("vmUser(%q) = %q, want %q", c.flag, got, c.want)
		}
	}
}
