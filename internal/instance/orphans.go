package instance

import (
	"context"
	"log/slog"
	"sort"
	"strings"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/fsutil"
	"tandem/internal/network"
)

// Orphans lists what this host has that no instance record accounts for: guests the drivers still
// have (their state dirs, maybe a running process), instance roots on the pools, volume
// attachments and network leases. A lost or replaced state file leaves exactly these. They are
// reported, never reused: a root a live process holds cannot be taken by a new instance or deleted
// (storage and checkNewRoot refuse it), and the name's address stays leased.
func (m *Manager) Orphans(ctx context.Context) ([]api.Orphan, error) {
	recs, err := m.store.ListInstances()
	if err != nil {
		return nil, err
	}
	ids, names := map[string]bool{}, map[string]bool{}
	for _, r := range recs {
		names[r.Name] = true
		if r.Handle != nil {
			ids[r.Handle.ID] = true
		}
	}
	out := m.orphanGuests(ctx, ids)
	if m.volumes != nil {
		atts, err := m.volumes.LocalAttachments(ctx)
		if err != nil {
			return nil, err
		}
		for _, a := range atts {
			if names[a.Instance] {
				continue
			}
			o := api.Orphan{Kind: "attachment", Name: a.Instance, Pool: a.Pool, Volume: a.Volume}
			if kind, _, _ := strings.Cut(a.Volume, "/"); kind == api.TypeContainer || kind == api.TypeVM {
				o.Kind = "root"
				if info, err := m.volumes.InstanceRoot(ctx, a.Pool, a.Instance, kind); err == nil {
					hs, _ := fsutil.Holders(info.Path)
					o.HeldBy = fsutil.DescribeHolders(hs)
				}
			}
			out = append(out, o)
		}
	}
	if lister, ok := m.networks.(interface {
		List(context.Context) []network.Network
	}); ok {
		for _, n := range lister.List(ctx) {
			for _, l := range n.Leases {
				if !names[l.Instance] {
					out = append(out, api.Orphan{Kind: "lease", Name: l.Instance, Network: n.Name, NIC: l.NIC,
						Address: l.IPv4.String() + " " + l.MAC})
				}
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out, nil
}

// orphanGuests asks every driver that can list its instances for those no record has.
func (m *Manager) orphanGuests(ctx context.Context, known map[string]bool) []api.Orphan {
	var out []api.Orphan
	for _, name := range m.drivers.Names() {
		drv, err := m.drivers.ByName(name)
		if err != nil {
			continue
		}
		inv, ok := drv.(driver.Inventory)
		if !ok {
			continue
		}
		ids, err := inv.InstanceIDs(ctx)
		if err != nil {
			slog.Warn("list the driver's instances", "driver", name, "err", err)
			continue
		}
		for _, id := range ids {
			if known[id] {
				continue
			}
			o := api.Orphan{Kind: "instance", Driver: name, ID: id}
			if st, err := drv.State(ctx, &driver.Handle{ID: id, Driver: name}); err == nil {
				o.Status = apiStatus(st)
			} else {
				o.Status = api.StatusError
			}
			out = append(out, o)
		}
	}
	return out
}

// reportOrphans logs, at start, what the state file does not account for, so a lost state file
// is never silent.
func (m *Manager) reportOrphans(ctx context.Context) {
	orphans, err := m.Orphans(ctx)
	if err != nil {
		slog.Error("look for guests and volumes the state file does not know", "err", err)
		return
	}
	for _, o := range orphans {
		slog.Warn("found something no instance record accounts for (a lost state file?); it is left alone and its root is not reused",
			"kind", o.Kind, "name", o.Name, "driver", o.Driver, "id", o.ID, "status", o.Status, "pool", o.Pool,
			"volume", o.Volume, "network", o.Network, "nic", o.NIC, "address", o.Address, "held_by", o.HeldBy)
	}
	if len(orphans) > 0 {
		slog.Warn("orphans found: `tandem host orphans` lists them", "count", len(orphans))
	}
}
