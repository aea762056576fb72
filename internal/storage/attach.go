package storage

import (
	"context"
	"slices"

	"tandem/internal/errdefs"
)

// Attach records that instance uses the volume. One writer at a time: a second instance is
// refused unless every attachment, the new one included, is read-only. Attaching again with the
// same mode is a no-op; switching mode follows the same rule. This is bookkeeping only (what
// used_by shows and what DeleteVolume checks); Acquire guards the data at run time.
func (m *Manager) Attach(ctx context.Context, pool, vol, instance string, readonly bool) error {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	if err := ValidateVolumeName("instance", instance); err != nil {
		return err
	}
	_, err = m.update(ctx, p, typ, name, func(v *Volume) error {
		if v.State != StateReady {
			return errdefs.Conflict("volume %s in pool %q is %s", v.Ref(), p.Name, v.State)
		}
		if v.Type == TypeImage {
			return errdefs.Invalid("image volumes cannot be attached")
		}
		i := slices.IndexFunc(v.UsedBy, func(a Attachment) bool { return a.Instance == instance })
		if i >= 0 && v.UsedBy[i].ReadOnly == readonly {
			return nil
		}
		for _, a := range v.UsedBy {
			if a.Instance != instance && (!readonly || !a.ReadOnly) {
				return errdefs.Conflict("volume %s is attached to %s; a volume can be shared only when every instance attaches it read-only",
					v.Ref(), usersOf(v))
			}
		}
		at := Attachment{Instance: instance, ReadOnly: readonly, Host: m.host}
		if i >= 0 {
			v.UsedBy[i] = at
		} else {
			v.UsedBy = append(v.UsedBy, at)
		}
		return nil
	})
	return err
}

// Detach removes instance from the volume's users.
func (m *Manager) Detach(ctx context.Context, pool, vol, instance string) error {
	p, _, err := m.usablePool(pool)
	if err != nil {
		return err
	}
	typ, name, err := parseRef(vol)
	if err != nil {
		return err
	}
	_, err = m.update(ctx, p, typ, name, func(v *Volume) error {
		n := len(v.UsedBy)
		v.UsedBy = slices.DeleteFunc(v.UsedBy, func(a Attachment) bool { return a.Instance == instance })
		if len(v.UsedBy) == n {
			return errdefs.NotFound("volume %s is not attached to %s", v.Ref(), instance)
		}
		return nil
	})
	return err
}

// VolumeAttachment is one attachment of a volume (custom, or an instance root), with where it is.
type VolumeAttachment struct {
	Pool   string // this host's name for the pool
	Volume string // TYPE/NAME
	Attachment
}

// LocalAttachments lists the attachments this host recorded on custom volumes and instance roots,
// over every usable pool (another host's attachments on a shared pool are that host's business).
// Recovery compares them with what the instances have.
func (m *Manager) LocalAttachments(ctx context.Context) ([]VolumeAttachment, error) {
	pools, err := m.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	var out []VolumeAttachment
	for _, pool := range pools {
		p, _, err := m.usablePool(pool.Name)
		if err != nil {
			continue // an unusable pool is reported by the pool itself
		}
		vols, err := m.listRecords(p)
		if err != nil {
			return nil, err
		}
		for _, v := range vols {
			if v.Type == TypeImage {
				continue
			}
			for _, a := range v.UsedBy {
				if a.Host == m.host || a.Host == "" {
					out = append(out, VolumeAttachment{Pool: p.Name, Volume: v.Ref(), Attachment: a})
				}
			}
		}
	}
	return out, nil
}
