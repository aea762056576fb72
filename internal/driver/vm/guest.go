package vm

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"tandem/internal/agent"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

// The guest capability types are the driver package's.
type (
	ExecRequest = driver.ExecRequest
	GuestInfo   = driver.GuestInfo
	FileOpts    = driver.FileOpts
	FileInfo    = driver.FileInfo
)

var (
	_ driver.Execer      = (*Driver)(nil)
	_ driver.Consoler    = (*Driver)(nil)
	_ driver.GuestInfoer = (*Driver)(nil)
	_ driver.Filer       = (*Driver)(nil)
)

// agentWait bounds how long a guest request waits for the agent to come up (a booting guest).
const agentWait = 60 * time.Second

var agentDial sync.Map // instance id -> *sync.Mutex: one dial at a time (QEMU serves one client)

// agentFor returns the instance's agent connection, dialling (and waiting for the guest) if needed.
// A connection is kept per running instance and shared by concurrent requests.
func (d *Driver) agentFor(ctx context.Context, h *driver.Handle) (*agent.Client, error) {
	if err := checkID(h.ID); err != nil {
		return nil, err
	}
	l, _ := agentDial.LoadOrStore(h.ID, &sync.Mutex{})
	l.(*sync.Mutex).Lock()
	defer l.(*sync.Mutex).Unlock()
	d.mu.Lock()
	c := d.agents[h.ID]
	d.mu.Unlock()
	if c != nil {
		select {
		case <-c.Done():
		default:
			return c, nil
		}
	}
	p := d.paths(h.ID)
	if d.qemuPID(p) == 0 {
		return nil, driver.ErrNotRunning
	}
	var cfg instanceConfig
	readJSON(p.config, &cfg)
	if cfg.DiskBoot {
		if err := d.diskGuestAgent(ctx, p); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(d.opts.AgentPath); err != nil {
		return nil, errdefs.Unavailable("vm: no guest agent: %s is missing", d.opts.AgentPath)
	}
	wctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, agentWait)
		defer cancel()
	}
	c, err := agent.Dial(wctx, p.agent)
	if err != nil {
		return nil, errdefs.Unavailable("vm: guest agent: %v", err)
	}
	d.mu.Lock()
	d.agents[h.ID] = c
	d.mu.Unlock()
	return c, nil
}

// dropAgent closes the instance's agent connection (the VM stops or goes away).
func (d *Driver) dropAgent(id string) {
	d.mu.Lock()
	c := d.agents[id]
	delete(d.agents, id)
	d.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// WaitAgent waits until the guest agent answers: the guest has booted to its init and beyond.
func (d *Driver) WaitAgent(ctx context.Context, h *driver.Handle) error {
	_, err := d.agentFor(ctx, h)
	return err
}

// Exec runs a command in the guest through the agent.
func (d *Driver) Exec(ctx context.Context, h *driver.Handle, req ExecRequest) (int, error) {
	c, err := d.agentFor(ctx, h)
	if err != nil {
		return -1, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	return c.Exec(ctx, agent.ExecRequest{Cmd: req.Cmd, Env: req.Env, Cwd: req.Cwd, TTY: req.TTY,
		Rows: req.Size.Rows, Cols: req.Size.Cols, Resize: relayResizes(ctx, req.Resize),
		Stdin: req.Stdin, Stdout: req.Stdout, Stderr: req.Stderr})
}

// relayResizes passes terminal sizes on in the agent's type until ctx ends.
func relayResizes(ctx context.Context, in <-chan driver.TermSize) <-chan agent.WindowSize {
	if in == nil {
		return nil
	}
	out := make(chan agent.WindowSize)
	go func() {
		for {
			select {
			case sz, ok := <-in:
				if !ok {
					return
				}
				select {
				case out <- agent.WindowSize(sz):
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// GuestInfo asks the agent for the guest's hostname, OS and addresses.
func (d *Driver) GuestInfo(ctx context.Context, h *driver.Handle) (GuestInfo, error) {
	c, err := d.agentFor(ctx, h)
	if err != nil {
		return GuestInfo{}, err
	}
	info, err := c.Info(ctx)
	return GuestInfo{Hostname: info.Hostname, OS: info.OS, Kernel: info.Kernel, IPs: info.IPs}, err
}

// PushFile writes a file in the guest.
func (d *Driver) PushFile(ctx context.Context, h *driver.Handle, path string, r io.Reader, opts FileOpts) error {
	c, err := d.agentFor(ctx, h)
	if err != nil {
		return err
	}
	return c.Push(ctx, path, r, agent.FileOpts(opts))
}

// PullFile reads a file from the guest.
func (d *Driver) PullFile(ctx context.Context, h *driver.Handle, path string, w io.Writer) (FileInfo, error) {
	c, err := d.agentFor(ctx, h)
	if err != nil {
		return FileInfo{}, err
	}
	fi, err := c.Pull(ctx, path, w)
	return FileInfo(fi), err
}

// Console connects to the serial console. QEMU's socket serves one client at a time (a second one
// would wait unanswered), so a second attach is refused; everything the console prints is also in
// the console log, connected or not.
func (d *Driver) Console(ctx context.Context, h *driver.Handle) (io.ReadWriteCloser, error) {
	if err := checkID(h.ID); err != nil {
		return nil, err
	}
	p := d.paths(h.ID)
	if d.qemuPID(p) == 0 {
		return nil, driver.ErrNotRunning
	}
	d.mu.Lock()
	busy := d.consoles[h.ID]
	d.consoles[h.ID] = true
	d.mu.Unlock()
	if busy {
		return nil, errdefs.Conflict("vm: the console is already attached")
	}
	var dialer net.Dialer
	nc, err := dialer.DialContext(ctx, "unix", p.console)
	if err != nil {
		d.releaseConsole(h.ID)
		return nil, fmt.Errorf("vm: console: %w", err)
	}
	return &consoleConn{Conn: nc, release: func() { d.releaseConsole(h.ID) }}, nil
}

func (d *Driver) releaseConsole(id string) {
	d.mu.Lock()
	delete(d.consoles, id)
	d.mu.Unlock()
}

type consoleConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *consoleConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Close drops the driver's open agent connections; VMs keep running. A daemon calls it on shutdown.
func (d *Driver) Close() error {
	d.mu.Lock()
	ids := make([]string, 0, len(d.agents))
	for id := range d.agents {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	for _, id := range ids {
		d.dropAgent(id)
	}
	return nil
}
