package main

import (
	"strings"
	"testing"
)

// The examples name the network the daemon really makes, not one that does not exist.
func TestCreateHelpNamesRealNetwork(t *testing.T) {
	for _, verb := range []string{"launch", "create"} {
		r := cli(t, t.TempDir(), false, verb, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "network=tandem0") || strings.Contains(r.stdout, "network=default") {
			t.Errorf("%s --help: code %d\n%s", verb, r.code, r.stdout)
		}
	}
}
