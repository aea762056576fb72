package main

import (
	"strings"
	"testing"
	"unicode/utf8"

	"tandem/api"
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

// What a guest reports is printed without its escape sequences and control characters, and cannot
// fake a line of its own.
func TestInfoCleansGuestText(t *testing.T) {
	in := &api.Instance{Name: "v1", Type: api.TypeVM, Image: "busybox", Status: api.StatusRunning,
		Config: map[string]string{"user.note": "a\x1b[8mhidden"},
		Guest: &api.GuestInfo{
			Hostname: "evil\x1b[2J\x1b]0;pwned\x07\nStatus: Stopped\r",
			OS:       "Linux\x1b[31m\u202egnp.exe\x9b1m\xff",
			IPs:      []string{"10.0.0.2\x00"},
		}}
	var b strings.Builder
	printInstance(&b, in)
	out := b.String()
	if strings.ContainsAny(out, "\x1b\x07\x00\r\u202e\u009b") || !utf8.ValidString(out) {
		t.Fatalf("control characters reached the terminal: %q", out)
	}
	if strings.Contains(out, "\nStatus: Stopped") {
		t.Fatalf("a guest's hostname printed a line of its own:\n%s", out)
	}
	for _, want := range []string{"Guest: Linuxgnp.exe\ufffd1m\ufffd, hostname evil Status: Stopped , addresses 10.0.0.2\ufffd\n", "user.note: ahidden\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestPrintable(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, ünïcode":    "plain text, ünïcode",
		"a\x1b[1;31mred\x1b[0m":  "ared",
		"title\x1b]0;x\x1b\\end": "titleend",
		"bell\x07":               "bell\ufffd",
		"lone\x1b":               "lone",
		"tab\tnl\n":              "tab nl ",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}
