package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultPath is the PATH commands get unless the request sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// drainGrace is how long output is still collected once the command has exited but something it
// started keeps the pipe or terminal open.
const drainGrace = 2 * time.Second

// exec runs one command and reports its exit. Output streams end before the exit frame.
func (s *Server) exec(req *activeReq, c *conn, id uint64, ex *ExecStart, stdin *inStream) {
	stop := make(chan struct{})
	defer close(stop)
	defer c.dropInbound(id, 0)
	stdout, stderr := c.outbound(id, 1, stop), c.outbound(id, 2, stop)
	env := append([]string{"PATH=" + DefaultPath, "HOME=/root", "TERM=xterm"}, ex.Env...)
	if ex.TTY {
		env = append(env, "TERM="+termFrom(ex.Env))
	}
	bin, err := lookPath(ex.Cmd[0], env)
	if err != nil {
		stdout.Close()
		stderr.Close()
		reply(c, id, "", err)
		return
	}
	cmd := exec.Command(bin, ex.Cmd[1:]...)
	cmd.Args[0] = ex.Cmd[0]
	cmd.Env = env
	cmd.Dir = ex.Cwd
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	var code int
	if ex.TTY {
		code, err = runTTY(req, cmd, ex, stdin, stdout)
	} else {
		code, err = runPipes(req, cmd, stdin, stdout, stderr)
	}
	stdout.Close()
	stderr.Close()
	if err != nil {
		reply(c, id, "", err)
		return
	}
	c.send(&Frame{T: tExit, ID: id, Code: code})
}

func termFrom(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "TERM="); ok {
			return v
		}
	}
	return "xterm"
}

// lookPath resolves a command against the PATH in the command's environment, not the agent's.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := DefaultPath
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in PATH", name)
}

// exitCode is the shell's convention: the status, or 128+n when signal n ended the process.
func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// runPipes runs cmd in its own process group with stdin, stdout and stderr on pipes.
func runPipes(req *activeReq, cmd *exec.Cmd, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return 0, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return 0, err
	}
	pid := cmd.Process.Pid
	req.setHooks(func(sig int) { syscall.Kill(-pid, syscall.Signal(sig)) }, nil)
	go func() {
		io.Copy(inW, stdin)
		inW.Close()
	}()
	var exited atomic.Bool
	copied := make(chan struct{}, 2)
	for _, p := range []struct {
		r *os.File
		w io.Writer
	}{{outR, stdout}, {errR, stderr}} {
		go func() {
			io.Copy(p.w, &graceReader{f: p.r, exited: &exited})
			p.r.Close()
			copied <- struct{}{}
		}()
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case <-waited:
	case <-req.ctx.Done():
		syscall.Kill(-pid, syscall.SIGKILL)
		<-waited
	}
	exited.Store(true)
	inW.Close() // unblocks nothing by itself, but a later stdin write fails fast
	<-copied
	<-copied
	return exitCode(cmd.ProcessState), nil
}

// graceReader reads a pipe; once the command has exited, a read that finds nothing for drainGrace
// ends the stream, so a daemon the command left behind holding the pipe does not hold the exec.
type graceReader struct {
	f      *os.File
	exited *atomic.Bool
}

func (g *graceReader) Read(p []byte) (int, error) {
	if g.exited.Load() {
		g.f.SetReadDeadline(time.Now().Add(drainGrace))
	} else {
		// Re-check soon: the exit may come while this read waits.
		g.f.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	}
	for {
		n, err := g.f.Read(p)
		if errors.Is(err, os.ErrDeadlineExceeded) && n == 0 && !g.exited.Load() {
			g.f.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, io.EOF
		}
		if errors.Is(err, syscall.EIO) { // a terminal whose last slave closed
			return n, io.EOF
		}
		return n, err
	}
}

// runTTY runs cmd as a session leader on a new pseudo-terminal.
func runTTY(req *activeReq, cmd *exec.Cmd, ex *ExecStart, stdin io.Reader, stdout io.Writer) (int, error) {
	master, slave, err := openPTY()
	if err != nil {
		return 0, err
	}
	defer master.Close()
	rows, cols := ex.Rows, ex.Cols
	if rows == 0 || cols == 0 {
		rows, cols = 24, 80
	}
	setSize(master, rows, cols)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	slave.Close()
	if err != nil {
		return 0, err
	}
	pid := cmd.Process.Pid
	req.setHooks(func(sig int) { syscall.Kill(-pid, syscall.Signal(sig)) },
		func(r, c uint16) { setSize(master, r, c) })
	go io.Copy(master, stdin)
	var exited atomic.Bool
	copied := make(chan struct{})
	go func() {
		io.Copy(stdout, &graceReader{f: master, exited: &exited})
		close(copied)
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case <-waited:
	case <-req.ctx.Done():
		syscall.Kill(-pid, syscall.SIGKILL)
		<-waited
	}
	exited.Store(true)
	<-copied
	return exitCode(cmd.ProcessState), nil
}

// openPTY opens a new pseudo-terminal pair (posix_openpt, unlockpt, ptsname). The master is made
// non-blocking before it becomes an *os.File, so reads on it honour deadlines.
func openPTY() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlockpt: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("ptsname: %w", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), s, nil
}

// setSize sets a terminal's size without Fd(), which would turn the file back to blocking mode.
func setSize(f *os.File, rows, cols uint16) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}
