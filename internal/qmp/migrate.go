package qmp

import (
	"context"
	"sort"
)

// Migration statuses (QAPI MigrationStatus), in query-migrate's "status"
// and the MIGRATION event's data.
const (
	MigrationNone          = "none"
	MigrationSetup         = "setup"
	MigrationActive        = "active"
	MigrationDevice        = "device"
	MigrationPreSwitchover = "pre-switchover"
	MigrationWaitUnplug    = "wait-unplug"
	MigrationCompleted     = "completed"
	MigrationFailed        = "failed"
	MigrationCancelling    = "cancelling"
	MigrationCancelled     = "cancelled"
	MigrationPostcopy      = "postcopy-active"
)

// MigrationStats is the "ram" part of query-migrate (QAPI MigrationStats).
type MigrationStats struct {
	Transferred    int64   `json:"transferred"` // bytes
	Remaining      int64   `json:"remaining"`
	Total          int64   `json:"total"`
	Duplicate      int64   `json:"duplicate"` // zero pages
	Normal         int64   `json:"normal"`
	NormalBytes    int64   `json:"normal-bytes"`
	DirtyPagesRate int64   `json:"dirty-pages-rate"` // pages/s
	Mbps           float64 `json:"mbps"`
	DirtySyncCount int64   `json:"dirty-sync-count"`
	PageSize       int64   `json:"page-size"`
	MultifdBytes   int64   `json:"multifd-bytes"`
	PagesPerSecond int64   `json:"pages-per-second"`
	PrecopyBytes   int64   `json:"precopy-bytes"`
	DowntimeBytes  int64   `json:"downtime-bytes"`
	PostcopyBytes  int64   `json:"postcopy-bytes"`
}

// MigrationInfo is query-migrate's reply (QAPI MigrationInfo). Times are in
// milliseconds. Fields QEMU leaves out are zero: Status is "" before any
// migration, RAM is nil until the migration is active, Downtime is set
// only once completed, ExpectedDowntime only while active.
type MigrationInfo struct {
	Status                string          `json:"status"`
	RAM                   *MigrationStats `json:"ram,omitempty"`
	TotalTime             int64           `json:"total-time"`
	SetupTime             int64           `json:"setup-time"`
	Downtime              int64           `json:"downtime"`
	ExpectedDowntime      int64           `json:"expected-downtime"`
	CPUThrottlePercentage int64           `json:"cpu-throttle-percentage"`
	ErrorDesc             string          `json:"error-desc"`
	BlockedReasons        []string        `json:"blocked-reasons"`
}

// QueryMigrate reports the progress of the current or last migration.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}

// MigrateSetCapabilities sets migration capabilities such as "events"
// (needed for MIGRATION events), "multifd", "postcopy-ram". Both ends must
// agree on most of them, and they are set before migrate/migrate-incoming.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps map[string]bool) error {
	names := make([]string, 0, len(caps))
	for n := range caps {
		names = append(names, n)
	}
	sort.Strings(names) // a stable wire order keeps scripted tests simple
	list := make([]map[string]any, 0, len(names))
	for _, n := range names {
		list = append(list, map[string]any{"capability": n, "state": caps[n]})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// MigrateSetParameters sets migration parameters, e.g. "max-bandwidth"
// (bytes/s; the 128 MiB/s default is what bounds a loopback migration),
// "downtime-limit" (ms), "multifd-channels".
func (c *Client) MigrateSetParameters(ctx context.Context, params map[string]any) error {
	return c.Execute(ctx, "migrate-set-parameters", params, nil)
}

// Migrate starts an outgoing migration to uri ("tcp:host:port",
// "unix:/path", "exec:cmd", "fd:name"). It returns once the migration has
// started; follow it with QueryMigrate or MIGRATION events.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming makes a QEMU started with -incoming defer listen on uri.
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrateCancel aborts the outgoing migration; the source keeps running.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}
