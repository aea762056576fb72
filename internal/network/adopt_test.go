package network

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"tandem/internal/errdefs"
)

// A bridge marked by a live Manager is refused, naming its pid and dir; once that Manager's
// process is gone (its lock released), or for the Manager that marked it, it may be taken.
func TestCheckBridgeOwner(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	lock := takeOwnerLock(a)
	if lock == nil {
		t.Fatal("no owner lock taken")
	}
	if again := takeOwnerLock(a); again != nil {
		t.Fatal("a second owner lock on the same dir")
	}
	br := &link{Name: "tandem0", Alias: ownerMark + a}
	err := checkBridgeOwner(br, b)
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) ||
		!strings.Contains(err.Error(), a) {
		t.Fatalf("bridge of a live owner: %v", err)
	}
	if err := checkBridgeOwner(br, a); err != nil {
		t.Fatalf("own bridge: %v", err)
	}
	if err := checkBridgeOwner(&link{Name: "tandem0"}, b); err != nil {
		t.Fatalf("unmarked bridge: %v", err)
	}
	lock.Close() // the owner died
	if err := checkBridgeOwner(br, b); err != nil {
		t.Fatalf("bridge of a dead owner: %v", err)
	}
	if err := checkBridgeOwner(&link{Name: "tandem0", Alias: ownerMark + "/nonexistent"}, b); err != nil {
		t.Fatalf("bridge of a removed dir: %v", err)
	}
}
