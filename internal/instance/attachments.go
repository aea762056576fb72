package instance

import (
	"context"
	"strings"

	"tandem/internal/logctx"
	"tandem/internal/storage"
	"tandem/internal/store"
)

// customRef is the TYPE/NAME a disk device's source names (a bare name is a custom volume).
func customRef(source string) string {
	if strings.Contains(source, "/") {
		return source
	}
	return storage.TypeCustom + "/" + source
}

// attachmentKey identifies one instance's use of one volume.
func attachmentKey(pool, ref, instance string) string {
	return pool + "/" + customRef(ref) + "@" + instance
}

// reconcileAttachments makes the volumes' used_by agree with the instances' disk devices. The two
// are written one after the other (volume first), so a crash between them leaves a volume attached
// to an instance that does not have it (it can then be neither deleted nor attached elsewhere, and
// detach says it is not attached), or the reverse. The instance record is the truth: a stale
// attachment is dropped, a missing one is recorded again. Attachments to instances this host has
// no record of are left alone: they may belong to a guest whose record was lost (Orphans lists
// them).
func (m *Manager) reconcileAttachments(ctx context.Context, recs []*store.InstanceRecord) {
	if m.volumes == nil {
		return
	}
	have, err := m.volumes.LocalAttachments(ctx)
	if err != nil {
		logctx.From(ctx).Error("list volume attachments to reconcile them", "err", err)
		return
	}
	known := map[string]*store.InstanceRecord{}
	want := map[string]bool{}
	for _, rec := range recs {
		known[rec.Name] = rec
		for _, name := range allDisks(rec.Desired.Devices) {
			dev := rec.Desired.Devices[name]
			want[attachmentKey(diskPool(dev), dev["source"], rec.Name)] = true
		}
	}
	found := map[string]bool{}
	for _, a := range have {
		rec, key := known[a.Instance], attachmentKey(a.Pool, a.Volume, a.Instance)
		switch {
		case rec == nil || rec.Pending != "" || !strings.HasPrefix(a.Volume, storage.TypeCustom+"/"):
			// Unknown (an orphan), settling its own volumes (an interrupted create or delete), or a
			// root (not a disk device).
		case want[key]:
			found[key] = true
		default:
			logctx.From(ctx).Warn("dropping a stale attachment: the instance has no such disk (a crash cut an attach or detach short)",
				"pool", a.Pool, "volume", a.Volume, "instance", a.Instance)
			if err := m.volumes.Detach(ctx, a.Pool, a.Volume, a.Instance); err != nil {
				logctx.From(ctx).Error("drop stale attachment", "pool", a.Pool, "volume", a.Volume, "instance", a.Instance, "err", err)
			}
		}
	}
	for _, rec := range recs {
		if rec.Pending != "" {
			continue
		}
		for _, name := range allDisks(rec.Desired.Devices) {
			dev := rec.Desired.Devices[name]
			if found[attachmentKey(diskPool(dev), dev["source"], rec.Name)] {
				continue
			}
			logctx.From(ctx).Warn("recording an attachment the volume had lost", "instance", rec.Name, "disk", name, "volume", dev["source"])
			if err := m.volumes.Attach(ctx, diskPool(dev), dev["source"], rec.Name, dev["readonly"] == "true"); err != nil {
				logctx.From(ctx).Error("record attachment", "instance", rec.Name, "disk", name, "err", err)
			}
		}
	}
}
