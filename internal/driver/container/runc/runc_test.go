package runc

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestError(t *testing.T) {
	err := Error("state", []byte(`{"level":"error","msg":"container does not exist","time":"x"}`+"\n"), errors.New("exit status 1"))
	if !errors.Is(err, ErrNotExist) {
		t.Errorf("%v is not ErrNotExist", err)
	}
	err = Error("create", []byte(`{"level":"warning","msg":"ignored","time":"x"}`+"\n"+`{"level":"error","msg":"unable to apply caps","time":"x"}`), errors.New("exit status 1"))
	if err.Error() != "runc create: unable to apply caps" {
		t.Errorf("%q", err)
	}
	if err := Error("kill", []byte("plain text failure\n"), errors.New("exit status 1")); !strings.Contains(err.Error(), "plain text failure") {
		t.Errorf("%q", err)
	}
	if err := Error("kill", nil, errors.New("signal: killed")); !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("%q", err)
	}
}

func TestArgs(t *testing.T) {
	r := &Runc{Path: "/usr/sbin/runc", Root: "/run/x/runc", CRIU: "/usr/local/sbin/criu"}
	got := r.ExecArgs("c1", ExecOpts{Args: []string{"sh", "-c", "--tty"}, TTY: true, Cwd: "/etc", Env: []string{"A=1"}})
	want := []string{"/usr/sbin/runc", "--root", "/run/x/runc", "--log-format", "json", "--criu", "/usr/local/sbin/criu",
		"exec", "--tty", "--cwd", "/etc", "--env", "A=1", "c1", "sh", "-c", "--tty"}
	if !slices.Equal(got, want) {
		t.Errorf("exec argv\n got %q\nwant %q", got, want)
	}
	got = r.RestoreArgs("c1", "/b", "/p", "/s", CheckpointOpts{ImagePath: "/i", TCPEstablished: true})
	if !slices.Contains(got, "--detach") || !slices.Contains(got, "--tcp-established") || got[len(got)-1] != "c1" {
		t.Errorf("restore argv %q", got)
	}
}
