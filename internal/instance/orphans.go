package instance

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"time"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/fsutil"
	"tandem/internal/logctx"
	"tandem/internal/network"
	"tandem/internal/store"
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
	if copies, err := m.store.BackupRecords(); err == nil {
		for i, o := range out {
			for _, c := range copies {
				if c.Handle != nil && c.Handle.ID == o.ID {
					out[i].Name = c.Name
				}
			}
		}
	}
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
			logctx.From(ctx).Warn("list the driver's instances", "driver", name, "err", err)
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
		logctx.From(ctx).Error("look for guests and volumes the state file does not know", "err", err)
		return
	}
	for _, o := range orphans {
		logctx.From(ctx).Warn("found something no instance record accounts for (a lost state file?); it is left alone and its root is not reused",
			"kind", o.Kind, "name", o.Name, "driver", o.Driver, "id", o.ID, "status", o.Status, "pool", o.Pool,
			"volume", o.Volume, "network", o.Network, "nic", o.NIC, "address", o.Address, "held_by", o.HeldBy)
	}
	if len(orphans) > 0 {
		logctx.From(ctx).Warn("orphans found: `tandem host orphans` lists them; restart tandemd with --recover to re-adopt "+
			"the instances whose record copy it keeps", "count", len(orphans))
	}
}

// Readopt takes back, from the instance records' copies the store keeps beside the state file,
// the instances the state file no longer knows whose driver still has them (running or not): what
// `tandemd --recover` does after a state file was lost or replaced. Recover then re-attaches them
// as after any restart. It returns the names re-adopted.
func (m *Manager) Readopt(ctx context.Context) ([]string, error) {
	copies, err := m.store.BackupRecords()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, rec := range copies {
		log := slog.With("instance", rec.Name)
		if _, err := m.store.GetInstance(rec.Name); err == nil || rec.Handle == nil {
			continue // known, or never got as far as a driver
		}
		drv, err := m.drivers.ByName(rec.Handle.Driver)
		if err != nil {
			log.Warn("not re-adopted: its driver is not available", "err", err)
			continue
		}
		st, err := drv.State(ctx, rec.Handle)
		if err != nil || st == driver.StatusGone {
			log.Warn("not re-adopted: its driver has nothing of it left", "status", st, "err", err)
			continue
		}
		rec.Observed = store.ObservedState{Status: apiStatus(st), At: time.Now().UTC()}
		if err := m.store.CreateInstance(rec); err != nil {
			log.Error("re-adopt", "err", err)
			continue
		}
		log.Warn("re-adopted an instance the state file had lost, from its record copy", "status", st, "desired", rec.Desired.Power)
		names = append(names, rec.Name)
	}
	return names, nil
}
