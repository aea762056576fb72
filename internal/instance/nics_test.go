package instance

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/network"
)

// fakeNetworks hands out addresses in memory, like the network manager's IPAM.
type fakeNetworks struct {
	mu     sync.Mutex
	leases map[string]network.Lease // network/instance/nic
	next   int
}

func (f *fakeNetworks) Attach(ctx context.Context, net, inst, nic string, opts network.AttachOptions) (network.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if net != "tandem0" && net != "net2" {
		return network.Lease{}, errdefs.NotFound("network %q not found", net)
	}
	key := net + "/" + inst + "/" + nic
	if l, ok := f.leases[key]; ok {
		return l, nil
	}
	f.next++
	l := network.Lease{Network: net, Instance: inst, NIC: nic, MAC: fmt.Sprintf("00:16:3e:00:00:%02x", f.next),
		IPv4: netip.AddrFrom4([4]byte{10, 0, 0, byte(f.next + 1)})}
	f.leases[key] = l
	return l, nil
}

func (f *fakeNetworks) Detach(ctx context.Context, net, inst, nic string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.leases, net+"/"+inst+"/"+nic)
	return nil
}

func (f *fakeNetworks) Lease(ctx context.Context, net, inst, nic string) (network.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.leases[net+"/"+inst+"/"+nic]
	if !ok {
		return l, errdefs.NotFound("no lease")
	}
	return l, nil
}

func (f *fakeNetworks) Unplug(ctx context.Context, net, inst, nic string) error { return nil }

func (f *fakeNetworks) keys() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.leases {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestNICAddressesFollowDevices(t *testing.T) {
	h := newHarness(t, t.TempDir(), 0)
	nets := &fakeNetworks{leases: map[string]network.Lease{}}
	h.m.SetNetworks(nets, "tandem0")
	ctx := context.Background()
	h.launch("c1")
	inst, _ := h.m.Get(ctx, "c1")
	if len(inst.NICs) != 1 || inst.NICs[0].Name != "eth0" || inst.NICs[0].IPv4 == "" {
		t.Fatalf("default NIC: %+v", inst.NICs)
	}
	ip := inst.NICs[0].IPv4

	if _, err := h.m.Patch(ctx, "c1", api.InstancePatch{Devices: map[string]map[string]string{
		"eth1": {"type": "nic", "network": "net2"}}}); err != nil {
		t.Fatal(err)
	}
	if got := nets.keys(); !slices.Equal(got, []string{"net2/c1/eth1", "tandem0/c1/eth0"}) {
		t.Fatalf("after adding eth1: %v", got)
	}
	// A NIC on a network that does not exist is refused and changes nothing.
	if _, err := h.m.Patch(ctx, "c1", api.InstancePatch{Devices: map[string]map[string]string{
		"eth2": {"type": "nic", "network": "nope"}}}); err == nil {
		t.Fatal("NIC on a missing network accepted")
	}
	if _, err := h.m.Patch(ctx, "c1", api.InstancePatch{Devices: map[string]map[string]string{"eth1": nil}}); err != nil {
		t.Fatal(err)
	}
	inst, _ = h.m.Get(ctx, "c1")
	if got := nets.keys(); !slices.Equal(got, []string{"tandem0/c1/eth0"}) || inst.NICs[0].IPv4 != ip || len(inst.Devices) != 1 {
		t.Fatalf("after removing eth1: %v %+v", got, inst)
	}
	h.wait(h.m.Delete(ctx, "c1", true))
	if got := nets.keys(); len(got) != 0 {
		t.Fatalf("delete left leases: %v", got)
	}
}
