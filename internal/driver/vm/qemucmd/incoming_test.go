package qemucmd

import (
	"slices"
	"testing"
)

// A migration destination pins the source's versioned machine type and waits for the stream.
func TestIncomingPinsMachineType(t *testing.T) {
	c := base(Q35)
	c.Kernel = "/k"
	c.MachineType = "pc-q35-7.2"
	c.Incoming = "defer"
	args, err := Build(c)
	if err != nil {
		t.Fatal(err)
	}
	if got := values(args, "-machine"); !slices.Equal(got, []string{"pc-q35-7.2"}) {
		t.Errorf("-machine %q", got)
	}
	if got := values(args, "-incoming"); !slices.Equal(got, []string{"defer"}) {
		t.Errorf("-incoming %q", got)
	}
	c.MachineType = "pc-i440fx-7.2" // another family than Machine says
	if _, err := Build(c); err == nil {
		t.Error("Build accepted a machine type of another family")
	}
}
