package image

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"tandem/internal/errdefs"
)

func TestParseMetadata(t *testing.T) {
	m, err := ParseMetadata([]byte(`{"os":"debian","release":"bookworm","architecture":"amd64","types":["container","vm"],"shutdown_signal":"SIGRTMIN+3"}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Architecture != "x86_64" {
		t.Errorf("architecture not normalised: %q", m.Architecture)
	}
	if m.StopSignal() != syscall.Signal(37) {
		t.Errorf("SIGRTMIN+3 = %d, want 37", m.StopSignal())
	}
	if _, err := ParseMetadata([]byte(`{"os":"x","architecture":"x86_64","types":["vm"]} {}`)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("trailing data: %v", err)
	}
	if _, err := ParseMetadata([]byte(`{"os":"x","architecture":"x86_64","types":["vm","vm"]}`)); err == nil {
		t.Error("duplicate type accepted")
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"SIGTERM": syscall.SIGTERM, "TERM": syscall.SIGTERM, "SIGUSR2": syscall.SIGUSR2, "sigpwr": syscall.SIGPWR,
		"SIGRTMIN": 34, "SIGRTMIN+3": 37, "SIGRTMAX": 64, "SIGRTMAX-2": 62,
	} {
		if got, err := ParseSignal(in); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "SIGFOO", "SIGRTMIN+40", "SIGRTMIN+x", "SIGRTMAX-40", "9"} {
		if _, err := ParseSignal(bad); err == nil {
			t.Errorf("ParseSignal(%q) accepted", bad)
		}
	}
	var m Metadata
	if m.StopSignal() != syscall.SIGTERM {
		t.Error("empty shutdown signal is not SIGTERM")
	}
}

func TestFindDebianMirror(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/apt/sources.list.d"), 0o755)
	write := func(rel, data string) {
		if err := os.WriteFile(filepath.Join(root, rel), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := FindDebianMirror(root, "bookworm"); got != DefaultDebianMirror {
		t.Errorf("no sources: %q", got)
	}
	write("etc/apt/sources.list.d/debian.sources", `Types: deb
# comment
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb deb-src
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no

Types: deb
URIs: http://mirror.example/debian/
Suites: bookworm
 bookworm-updates
Components: main
`)
	if got := FindDebianMirror(root, "bookworm"); got != "http://mirror.example/debian" {
		t.Errorf("deb822: %q", got)
	}
	write("etc/apt/sources.list", "# old style\ndeb [arch=amd64 signed-by=/k.gpg] http://list.example/debian trixie main\ndeb-src http://src.example/debian trixie main\n")
	if got := FindDebianMirror(root, "trixie"); got != "http://list.example/debian" {
		t.Errorf("one-line: %q", got)
	}
	// A release no source lists: the first non-security mirror.
	if got := FindDebianMirror(root, "sid"); got != "http://list.example/debian" {
		t.Errorf("fallback: %q", got)
	}
}
