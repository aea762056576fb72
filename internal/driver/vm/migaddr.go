package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"tandem/internal/errdefs"
	"tandem/internal/qmp"
)

// Names of what a mirrored migration adds: the NBD export on the destination, the NBD client node
// and mirror job on the source. One root disk, so one of each.
const (
	rootNode   = "fmt-root" // the root disk's format node (qemucmd names it fmt-<id>)
	exportName = "root"
	mirrorNode = "mig-root" // source: the nbd client node, and the mirror job's id
)

// sockAddr is a migration or NBD address: tcp:HOST:PORT or unix:PATH.
type sockAddr struct {
	unix       string
	host, port string
}

func parseAddr(s string) (sockAddr, error) {
	switch {
	case strings.HasPrefix(s, "unix:") && len(s) > len("unix:"):
		return sockAddr{unix: s[len("unix:"):]}, nil
	case strings.HasPrefix(s, "tcp:"):
		host, port, err := net.SplitHostPort(s[len("tcp:"):])
		if n, perr := strconv.Atoi(port); err == nil && perr == nil && n > 0 && n < 65536 && host != "" {
			return sockAddr{host: host, port: port}, nil
		}
	}
	return sockAddr{}, errdefs.Invalid("vm: address %q: want tcp:HOST:PORT (a port other than 0) or unix:PATH", s)
}

// shareAddrs lets QEMU's user use unix socket addresses the daemon chose: listen in their
// directories (QEMU makes and unlinks the socket) and connect to sockets already there (the
// tunnels of a move). tcp addresses and "" need nothing.
func (d *Driver) shareAddrs(addrs ...string) error {
	for _, s := range addrs {
		a, err := parseAddr(s)
		if s == "" || err != nil || a.unix == "" {
			continue
		}
		if err := d.giveFile(filepath.Dir(a.unix)); err != nil {
			return fmt.Errorf("vm: handing %s to the qemu user: %w", filepath.Dir(a.unix), err)
		}
		if err := d.giveFile(a.unix); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("vm: handing %s to the qemu user: %w", a.unix, err)
		}
	}
	return nil
}

// flat is QAPI's SocketAddress (blockdev-add's nbd server).
func (a sockAddr) flat() map[string]any {
	if a.unix != "" {
		return map[string]any{"type": "unix", "path": a.unix}
	}
	return map[string]any{"type": "inet", "host": a.host, "port": a.port}
}

// legacy is QAPI's SocketAddressLegacy (nbd-server-start).
func (a sockAddr) legacy() map[string]any {
	if a.unix != "" {
		return map[string]any{"type": "unix", "data": map[string]any{"path": a.unix}}
	}
	return map[string]any{"type": "inet", "data": map[string]any{"host": a.host, "port": a.port}}
}

// blockJob is one element of query-block-jobs.
type blockJob struct {
	Device string `json:"device"`
	Type   string `json:"type"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
}

func blockJobs(ctx context.Context, c *qmp.Client) ([]blockJob, error) {
	var jobs []blockJob
	err := c.Execute(ctx, "query-block-jobs", nil, &jobs)
	return jobs, err
}

func findJob(jobs []blockJob, id string) *blockJob {
	for i := range jobs {
		if jobs[i].Device == id {
			return &jobs[i]
		}
	}
	return nil
}

// jobEvent is the data of the BLOCK_JOB_* events.
type jobEvent struct {
	Device string `json:"device"`
	Error  string `json:"error"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
}

func decodeJob(ev qmp.Event) jobEvent {
	var j jobEvent
	ev.Decode(&j)
	return j
}

// blockDevice is what query-block tells of a device's medium.
type blockDevice struct {
	Device   string `json:"device"`
	QDev     string `json:"qdev"`
	Inserted *struct {
		NodeName string `json:"node-name"`
		ReadOnly bool   `json:"ro"`
		Image    struct {
			VirtualSize int64 `json:"virtual-size"`
			ActualSize  int64 `json:"actual-size"`
		} `json:"image"`
	} `json:"inserted"`
}

func queryBlock(ctx context.Context, c *qmp.Client) ([]blockDevice, error) {
	raw, err := c.QueryBlock(ctx)
	if err != nil {
		return nil, err
	}
	var devs []blockDevice
	return devs, json.Unmarshal(raw, &devs)
}

// qomGet reads a QOM property.
func qomGet(ctx context.Context, c *qmp.Client, path, prop string, v any) error {
	return c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": prop}, v)
}

// activeMigration says whether a migration status is one still in flight.
func activeMigration(status string) bool {
	switch status {
	case qmp.MigrationSetup, qmp.MigrationActive, qmp.MigrationDevice, qmp.MigrationPreSwitchover,
		qmp.MigrationWaitUnplug, qmp.MigrationCancelling, qmp.MigrationPostcopy:
		return true
	}
	return false
}
