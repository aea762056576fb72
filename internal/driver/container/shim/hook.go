package shim

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// NetnsHookArg is the shim subcommand runc runs as a createRuntime hook during `runc restore`:
// runc runs those hooks when CRIU has made the restored container's namespaces and before it
// restores their contents (CRIU's "setup-namespaces" notification), with the OCI state (the
// restored init's pid) on stdin. The hook hands the pid to the daemon, which is waiting on the
// unix socket given as the argument, and exits 0 once the daemon says the network namespace is
// ready ("ok"), 1 otherwise. The daemon binary re-executed: <binary> <ShimArg> netns-hook <socket>.
const NetnsHookArg = "netns-hook"

// netnsHookTimeout bounds the whole exchange (runc has its own hook timeout too).
const netnsHookTimeout = 2 * time.Minute

func netnsHook(args []string, stdin io.Reader) int {
	if len(args) != 1 {
		fmt.Fprintf(os.Stderr, "netns-hook: usage: netns-hook <socket> (got %q)\n", args)
		return 2
	}
	if err := runNetnsHook(args[0], stdin); err != nil {
		fmt.Fprintf(os.Stderr, "netns-hook: %v\n", err)
		return 1
	}
	return 0
}

func runNetnsHook(socket string, stdin io.Reader) error {
	var state struct {
		Pid int `json:"pid"`
	}
	if err := json.NewDecoder(stdin).Decode(&state); err != nil {
		return fmt.Errorf("read the OCI state: %w", err)
	}
	if state.Pid <= 0 {
		return fmt.Errorf("the OCI state has no pid")
	}
	conn, err := net.DialTimeout("unix", socket, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(netnsHookTimeout))
	if _, err := fmt.Fprintf(conn, "pid %d\n", state.Pid); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no answer from the daemon: %w", err)
	}
	line = strings.TrimSpace(line)
	if line != "ok" {
		return fmt.Errorf("%s", strings.TrimPrefix(line, "error "))
	}
	return nil
}
