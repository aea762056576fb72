package qmp_test

import (
	"encoding/json"
	"testing"

	"tandem/internal/qmp"
	"tandem/internal/qmp/qmptest"
)

// Each helper must put QEMU 7.2's wire names on the socket.
func TestHelpersWireNames(t *testing.T) {
	args := qmptest.Expect
	srv := qmptest.NewServer(t,
		args("stop").Args(nil),
		args("cont"),
		args("system_powerdown"),
		args("system_reset"),
		args("query-version").Return(map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 11}, "package": "Debian 1:7.2+dfsg-7"}),
		args("blockdev-del").Args(map[string]any{"node-name": "n1"}),
		args("device_add").Args(map[string]any{"driver": "virtio-blk-pci", "id": "d1", "drive": "n1"}),
		args("query-block").Return([]any{}),
		args("query-named-block-nodes").Args(map[string]any{"flat": true}).Return([]any{map[string]any{"node-name": "n1"}}),
		args("human-monitor-command").Args(map[string]any{"command-line": "info status"}).Return("VM status: running\r\n"),
		args("balloon").Args(map[string]any{"value": 256 << 20}),
		args("query-balloon").Return(map[string]any{"actual": 268435456}),
		args("chardev-add").Args(map[string]any{"id": "c1", "backend": map[string]any{"type": "pty", "data": map[string]any{}}}).Return(map[string]any{"pty": "/dev/pts/7"}),
		args("chardev-remove").Args(map[string]any{"id": "c1"}),
		args("query-cpus-fast").Return([]any{map[string]any{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": 4242, "target": "x86_64", "props": map[string]any{"core-id": 0}}}),
		args("migrate-set-capabilities").Args(map[string]any{"capabilities": []any{
			map[string]any{"capability": "events", "state": true},
			map[string]any{"capability": "multifd", "state": false},
		}}),
		args("migrate-set-parameters").Args(map[string]any{"max-bandwidth": 1 << 30, "downtime-limit": 50}),
		args("migrate").Args(map[string]any{"uri": "tcp:127.0.0.1:4444"}),
		args("migrate-incoming").Args(map[string]any{"uri": "tcp:127.0.0.1:4444"}),
		args("query-migrate").Return(map[string]any{
			"status": "completed", "total-time": 512, "downtime": 11, "setup-time": 3,
			"ram": map[string]any{"transferred": 100, "remaining": 0, "total": 300, "dirty-pages-rate": 7, "mbps": 1024.5},
		}),
		args("migrate_cancel"),
		args("quit"),
	)
	c := srv.Dial(t)
	ctx := testCtx(t)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Stop(ctx))
	must(c.Cont(ctx))
	must(c.SystemPowerdown(ctx))
	must(c.SystemReset(ctx))
	v, err := c.QueryVersion(ctx)
	must(err)
	if v.QEMU.Major != 7 || v.QEMU.Minor != 2 || v.QEMU.Micro != 11 || v.Package == "" {
		t.Errorf("QueryVersion = %+v", v)
	}
	must(c.BlockdevDel(ctx, "n1"))
	must(c.DeviceAdd(ctx, map[string]any{"driver": "virtio-blk-pci", "id": "d1", "drive": "n1"}))
	_, err = c.QueryBlock(ctx)
	must(err)
	raw, err := c.QueryNamedBlockNodes(ctx, true)
	must(err)
	var nodes []struct {
		Name string `json:"node-name"`
	}
	if json.Unmarshal(raw, &nodes) != nil || len(nodes) != 1 || nodes[0].Name != "n1" {
		t.Errorf("QueryNamedBlockNodes = %s", raw)
	}
	out, err := c.HumanMonitorCommand(ctx, "info status")
	must(err)
	if out != "VM status: running\r\n" {
		t.Errorf("HumanMonitorCommand = %q", out)
	}
	must(c.BalloonSet(ctx, 256<<20))
	actual, err := c.QueryBalloon(ctx)
	must(err)
	if actual != 256<<20 {
		t.Errorf("QueryBalloon = %d", actual)
	}
	pty, err := c.ChardevAdd(ctx, "c1", map[string]any{"type": "pty", "data": map[string]any{}})
	must(err)
	if pty != "/dev/pts/7" {
		t.Errorf("ChardevAdd pty = %q", pty)
	}
	must(c.ChardevRemove(ctx, "c1"))
	cpus, err := c.QueryCPUsFast(ctx)
	must(err)
	if len(cpus) != 1 || cpus[0].ThreadID != 4242 || cpus[0].QOMPath == "" || cpus[0].Target != "x86_64" {
		t.Errorf("QueryCPUsFast = %+v", cpus)
	}
	must(c.MigrateSetCapabilities(ctx, map[string]bool{"multifd": false, "events": true}))
	must(c.MigrateSetParameters(ctx, map[string]any{"max-bandwidth": 1 << 30, "downtime-limit": 50}))
	must(c.Migrate(ctx, "tcp:127.0.0.1:4444"))
	must(c.MigrateIncoming(ctx, "tcp:127.0.0.1:4444"))
	m, err := c.QueryMigrate(ctx)
	must(err)
	if m.Status != qmp.MigrationCompleted || m.TotalTime != 512 || m.Downtime != 11 || m.RAM == nil ||
		m.RAM.Transferred != 100 || m.RAM.Total != 300 || m.RAM.DirtyPagesRate != 7 || m.RAM.Mbps != 1024.5 {
		t.Errorf("QueryMigrate = %+v ram %+v", m, m.RAM)
	}
	must(c.MigrateCancel(ctx))
	must(c.Quit(ctx))
}
