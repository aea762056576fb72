package migrate

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// Trees (a container's rootfs, CRIU's images, a VM's disk directory) go with rsync: it keeps
// numeric owners, hard links, xattrs and ACLs, and its second pass sends only what changed while
// the first ran. The source runs the rsync client with a socat "remote shell" that connects to a
// forwarder; the destination runs rsync's daemon-over-shell server on the tunnel, with a
// one-module config it writes itself, so the source chooses nothing on the destination but the
// files it sends.

// rsyncModule is the one module a destination's rsync serves.
const rsyncModule = "dest"

// serveRsync runs rsync's server for dir on conn until the client is done.
func serveRsync(ctx context.Context, conn io.ReadWriteCloser, dir, tmp string) error {
	// One config per server: a move runs several side by side.
	f, err := os.CreateTemp(tmp, "rsyncd-*.conf")
	if err != nil {
		return err
	}
	f.Close()
	conf := f.Name()
	defer os.Remove(conf)
	text := fmt.Sprintf(`[%s]
path = %s
read only = false
use chroot = true
munge symlinks = false
numeric ids = true
uid = 0
gid = 0
`, rsyncModule, dir)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return err
	}
	// The process gets real pipes, not conn: exec would otherwise wait for a copy from conn that
	// ends only when the client hangs up, after it waited for this process to end.
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "rsync", "--server", "--daemon", "--config="+conf, ".")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, &stderr
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return err
	}
	go func() {
		io.Copy(inW, conn)
		inW.Close()
	}()
	sent := make(chan struct{})
	go func() {
		io.Copy(conn, outR)
		close(sent)
	}()
	err = cmd.Wait()
	<-sent
	outR.Close()
	conn.Close()
	if err != nil {
		return fmt.Errorf("rsync server: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// rsyncOpts tune one rsync pass.
type rsyncOpts struct {
	Socket   string // a forwarder to the destination's rsync endpoint
	BWLimit  int64  // bytes/s; 0: none
	Progress func(percent int)
}

var percentRE = regexp.MustCompile(`(\d+)%`)

// rsyncTo sends the tree under src to the destination's module, deleting what src lacks.
func rsyncTo(ctx context.Context, src string, o rsyncOpts) error {
	args := []string{"-aHAXS", "--numeric-ids", "--delete", "--info=progress2", "--no-inc-recursive",
		"--timeout=" + strconv.Itoa(int(StallTimeout.Seconds())),
		"-e", fmt.Sprintf("sh -c 'exec socat - UNIX-CONNECT:%s' tunnel", o.Socket)}
	if o.BWLimit > 0 {
		args = append(args, "--bwlimit="+strconv.FormatInt(max(o.BWLimit/1024, 1), 10))
	}
	args = append(args, strings.TrimSuffix(src, "/")+"/", "tandem::"+rsyncModule+"/")
	cmd := exec.CommandContext(ctx, "rsync", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	sc.Split(splitCRLF)
	for sc.Scan() {
		if m := percentRE.FindStringSubmatch(sc.Text()); m != nil && o.Progress != nil {
			if p, err := strconv.Atoi(m[1]); err == nil {
				o.Progress(p)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("rsync: %v: %s", err, lastLine(stderr.String()))
	}
	if o.Progress != nil {
		o.Progress(100)
	}
	return nil
}

// splitCRLF splits rsync's progress output, which rewrites its line with \r.
func splitCRLF(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexAny(data, "\r\n"); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// lastLine is rsync's summary of what went wrong (its last stderr line).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
