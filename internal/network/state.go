package network

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"tandem/internal/fsutil"
)

const stateFile = "network.json"

// state is one network as persisted in <Dir>/<name>/network.json: its settings and IPAM.
type state struct {
	Name      string       `json:"name"`
	Subnet    netip.Prefix `json:"subnet"`
	NAT       bool         `json:"nat"`
	DNSDomain string       `json:"dns_domain"`
	// Uplink is a host interface enslaved to the bridge, joining this network to the same-named
	// networks of other hosts on one L2 segment (uplink.go); "" for a host-local network.
	Uplink string `json:"uplink,omitempty"`
	// HostAccess lifts the input filter: instances may reach any service of the host (nft.go).
	HostAccess bool `json:"host_access,omitempty"`
	// BridgeMAC is fixed so the bridge does not take a port's MAC and change it as ports come and go.
	// It derives from the name alone, so with an uplink every host's gateway has the same MAC (and
	// address): an instance moved to another host finds its gateway unchanged, answered locally.
	BridgeMAC string    `json:"bridge_mac"`
	CreatedAt time.Time `json:"created_at"`
	// Next is where the next dynamic allocation starts looking: round robin, so a released address
	// is not handed out again at once while dnsmasq may still hold a lease for it.
	Next netip.Addr `json:"next,omitzero"`
	// Attachments are keyed by instance + "/" + nic.
	Attachments map[string]*attachment `json:"attachments"`
}

// attachment is one NIC's place on the network.
type attachment struct {
	Instance string     `json:"instance"`
	NIC      string     `json:"nic"`
	MAC      string     `json:"mac"`
	IPv4     netip.Addr `json:"ipv4"`
	Static   bool       `json:"static,omitempty"` // the operator asked for this address
	Ingress  string     `json:"ingress,omitempty"`
	Egress   string     `json:"egress,omitempty"`
	// HostIf is the host-side veth or tap while plugged; the anti-spoofing rules follow it.
	HostIf string `json:"host_if,omitempty"`
	Kind   string `json:"kind,omitempty"` // "veth" or "tap"
}

func attachKey(instance, nic string) string { return instance + "/" + nic }

func (s *state) gateway() netip.Addr { return s.Subnet.Addr().Next() }

// broadcast is the last address of the subnet.
func (s *state) broadcast() netip.Addr {
	a := s.Subnet.Addr().As4()
	host := uint32(1)<<(32-s.Subnet.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// sortedAttachments returns the attachments in a stable order, so generated files are stable too.
func (s *state) sortedAttachments() []*attachment {
	out := make([]*attachment, 0, len(s.Attachments))
	for _, a := range s.Attachments {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool {
		return attachKey(out[i].Instance, out[i].NIC) < attachKey(out[j].Instance, out[j].NIC)
	})
	return out
}

// clone deep-copies a state so a failed change can be dropped without touching the original.
func (s *state) clone() *state {
	c := *s
	c.Attachments = make(map[string]*attachment, len(s.Attachments))
	for k, a := range s.Attachments {
		ac := *a
		c.Attachments[k] = &ac
	}
	return &c
}

func saveState(dir string, s *state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, stateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save network %q: %w", s.Name, err)
	}
	return nil
}

func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Attachments == nil {
		s.Attachments = map[string]*attachment{}
	}
	if err := ValidateName(s.Name); err != nil || s.Name != filepath.Base(dir) || !s.Subnet.IsValid() {
		return nil, fmt.Errorf("%s: inconsistent network record", filepath.Join(dir, stateFile))
	}
	return &s, nil
}

// loadAll reads every network under dir. Directories without a record are leftovers of a Create that
// crashed before saving anything, and are reported so the caller can remove them.
func loadAll(dir string) (nets map[string]*state, leftovers []string, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	nets = map[string]*state{}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		s, err := loadState(filepath.Join(dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			leftovers = append(leftovers, filepath.Join(dir, e.Name()))
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		nets[s.Name] = s
	}
	return nets, leftovers, nil
}
