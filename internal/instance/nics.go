package instance

import (
	"context"
	"fmt"
	"maps"

	"tandem/api"
	"tandem/internal/driver"
	"tandem/internal/errdefs"
	"tandem/internal/logctx"
	"tandem/internal/network"
	"tandem/internal/store"
)

// Networks is what the control plane needs of the network manager: address bookkeeping per NIC.
// Plugging the NIC into the instance is the driver's job.
type Networks interface {
	Attach(ctx context.Context, network, instance, nic string, opts network.AttachOptions) (network.Lease, error)
	Detach(ctx context.Context, network, instance, nic string) error
	Lease(ctx context.Context, network, instance, nic string) (network.Lease, error)
	Unplug(ctx context.Context, network, instance, nic string) error
}

func isNIC(dev map[string]string) bool { return dev["type"] == "nic" }

// withDefaultNIC gives an instance that asked for no NIC an eth0 on the default network, as Incus's
// default profile does.
func (m *Manager) withDefaultNIC(devices api.Devices) api.Devices {
	if m.networks == nil || m.defaultNetwork == "" {
		return devices
	}
	for _, d := range devices {
		if isNIC(d) {
			return devices
		}
	}
	out := maps.Clone(devices)
	if out == nil {
		out = api.Devices{}
	}
	if _, taken := out["eth0"]; taken {
		return devices
	}
	out["eth0"] = map[string]string{"type": "nic", "network": m.defaultNetwork}
	return out
}

// attachNICs reserves an address for every nic device in want that old lacks or that changed. On
// error it undoes what it did, so the caller has nothing to clean up.
func (m *Manager) attachNICs(ctx context.Context, instance string, old, want map[string]map[string]string) error {
	var done []string
	for name, dev := range want {
		if !isNIC(dev) || maps.Equal(old[name], dev) {
			continue
		}
		if m.networks == nil {
			m.detachNICs(instance, want, done)
			return errdefs.Unavailable("networking is disabled on this host: device %q cannot be added", name)
		}
		_, err := m.networks.Attach(ctx, network.DeviceNetwork(dev), instance, name, network.AttachOptions{
			MAC: dev["hwaddr"], IPv4: dev["ipv4.address"], Ingress: dev["limits.ingress"], Egress: dev["limits.egress"],
		})
		if err != nil {
			m.detachNICs(instance, want, done)
			return err
		}
		done = append(done, name)
	}
	return nil
}

// allNICs names every nic device.
func allNICs(devices map[string]map[string]string) []string {
	var names []string
	for name, dev := range devices {
		if isNIC(dev) {
			names = append(names, name)
		}
	}
	return names
}

// detachNICs releases the addresses of the named nic devices.
func (m *Manager) detachNICs(instance string, devices map[string]map[string]string, names []string) {
	if m.networks == nil {
		return
	}
	ctx := context.Background()
	for _, name := range names {
		if err := m.networks.Detach(ctx, network.DeviceNetwork(devices[name]), instance, name); err != nil {
			logctx.From(ctx).Error("release NIC address", "instance", instance, "nic", name, "err", err)
		}
	}
}

// unplugNICs takes the host side of every NIC off its bridge once the instance has stopped (the
// driver plugs them at start, when the namespace or tap can exist).
func (m *Manager) unplugNICs(ctx context.Context, instance string, devices map[string]map[string]string) {
	if m.networks == nil {
		return
	}
	for _, name := range allNICs(devices) {
		if err := m.networks.Unplug(ctx, network.DeviceNetwork(devices[name]), instance, name); err != nil {
			logctx.From(ctx).Warn("unplug NIC", "instance", instance, "nic", name, "err", err)
		}
	}
}

// removedNICs lists nic devices in old that want no longer has, or has on another network.
func removedNICs(old, want map[string]map[string]string) []string {
	var out []string
	for name, dev := range old {
		if isNIC(dev) && (want[name] == nil || network.DeviceNetwork(want[name]) != network.DeviceNetwork(dev)) {
			out = append(out, name)
		}
	}
	return out
}

// nicViews reports each NIC's MAC and address.
func (m *Manager) nicViews(ctx context.Context, instance string, devices map[string]map[string]string) []api.NIC {
	if m.networks == nil {
		return nil
	}
	var out []api.NIC
	for name, dev := range devices {
		if !isNIC(dev) {
			continue
		}
		nic := api.NIC{Name: name, Network: network.DeviceNetwork(dev)}
		if l, err := m.networks.Lease(ctx, nic.Network, instance, name); err == nil {
			nic.MAC, nic.IPv4 = l.MAC, l.IPv4.String()
		}
		out = append(out, nic)
	}
	return out
}

// hotplugNICs plugs NICs added to a running instance and unplugs removed ones. A stopped instance
// gets its NICs at its next start.
func (m *Manager) hotplugNICs(ctx context.Context, drv driver.Driver, rec *store.InstanceRecord, want map[string]map[string]string) error {
	added := removedNICs(want, rec.Desired.Devices) // in want, not in the old set
	removed := removedNICs(rec.Desired.Devices, want)
	if len(added) == 0 && len(removed) == 0 {
		return nil
	}
	if st, err := drv.State(ctx, rec.Handle); err != nil || st != driver.StatusRunning {
		return nil
	}
	hp, ok := drv.(driver.NICHotplugger)
	if !ok {
		return errdefs.Invalid("%s instances cannot change NICs while running: stop it first", rec.Type)
	}
	for _, name := range removed {
		if err := hp.RemoveNIC(ctx, rec.Handle, name, rec.Desired.Devices[name]); err != nil {
			return fmt.Errorf("unplug %s: %w", name, err)
		}
	}
	for i, name := range added {
		if err := hp.AddNIC(ctx, rec.Handle, name, want[name]); err != nil {
			for _, done := range added[:i] {
				hp.RemoveNIC(ctx, rec.Handle, done, want[done])
			}
			return fmt.Errorf("plug %s: %w", name, err)
		}
	}
	return nil
}
