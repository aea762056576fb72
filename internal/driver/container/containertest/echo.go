package containertest

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EchoClient keeps one TCP connection to an echo server and sends "ping N" every Interval,
// recording when each echo comes back: the test of a connection that must survive a checkpoint.
type EchoClient struct {
	conn     net.Conn
	Interval time.Duration

	mu      sync.Mutex
	sent    int
	echoed  []int       // N of each echo, in arrival order
	at      []time.Time // arrival times
	readErr error
	stop    chan struct{}
	done    sync.WaitGroup
}

// DialEcho connects to addr (retrying for up to timeout: the server may still be starting) and
// starts pinging.
func DialEcho(addr string, interval, timeout time.Duration) (*EchoClient, error) {
	var conn net.Conn
	var err error
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		if conn, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			// Proves the server end is there (a listener in a half-started container may accept nothing).
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err = fmt.Fprintf(conn, "hello\n"); err == nil {
				var line string
				line, err = bufio.NewReader(conn).ReadString('\n')
				if err == nil && line != "hello\n" {
					err = fmt.Errorf("echo server answered %q", line)
				}
			}
			conn.SetDeadline(time.Time{})
			if err == nil {
				break
			}
			conn.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("connect to echo server %s: %w", addr, err)
		}
	}
	c := &EchoClient{conn: conn, Interval: interval, stop: make(chan struct{})}
	c.done.Add(2)
	go c.writer()
	go c.reader()
	return c, nil
}

func (c *EchoClient) writer() {
	defer c.done.Done()
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if _, err := fmt.Fprintf(c.conn, "ping %d\n", n); err != nil {
			return
		}
		c.mu.Lock()
		c.sent = n
		c.mu.Unlock()
	}
}

func (c *EchoClient) reader() {
	defer c.done.Done()
	sc := bufio.NewScanner(c.conn)
	for sc.Scan() {
		n, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "ping "))
		if err != nil {
			continue
		}
		c.mu.Lock()
		c.echoed = append(c.echoed, n)
		c.at = append(c.at, time.Now())
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.readErr = sc.Err()
	if c.readErr == nil {
		c.readErr = fmt.Errorf("connection closed by the server")
	}
	c.mu.Unlock()
}

// Echoed returns how many echoes came back and the last N echoed.
func (c *EchoClient) Echoed() (count, last int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.echoed) == 0 {
		return 0, 0
	}
	return len(c.echoed), c.echoed[len(c.echoed)-1]
}

// WaitEcho waits until an echo of a ping sent after this call comes back.
func (c *EchoClient) WaitEcho(timeout time.Duration) error {
	c.mu.Lock()
	want := c.sent + 1
	c.mu.Unlock()
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c.mu.Lock()
		ok := len(c.echoed) > 0 && c.echoed[len(c.echoed)-1] >= want
		err := c.readErr
		c.mu.Unlock()
		if ok {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("no echo of ping %d within %v", want, timeout)
}

// Check reports a broken sequence: echoes must come back in order, each ping exactly once.
func (c *EchoClient) Check() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.echoed {
		if n != i+1 {
			return fmt.Errorf("echo %d is of ping %d: pings lost or repeated", i+1, n)
		}
	}
	return nil
}

// MaxGap returns the longest time between two echoes.
func (c *EchoClient) MaxGap() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gap time.Duration
	for i := 1; i < len(c.at); i++ {
		gap = max(gap, c.at[i].Sub(c.at[i-1]))
	}
	return gap
}

// Close stops the client.
func (c *EchoClient) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.conn.Close()
	c.done.Wait()
}
