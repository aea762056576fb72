package api

// Network is a managed network: a bridge with NAT, DHCP and DNS, and optionally an uplink.
type Network struct {
	Name      string `json:"name" yaml:"name"`
	Bridge    string `json:"bridge" yaml:"bridge"`
	Subnet    string `json:"subnet" yaml:"subnet"`
	Gateway   string `json:"gateway" yaml:"gateway"`
	NAT       bool   `json:"nat" yaml:"nat"`
	DNSDomain string `json:"dns_domain" yaml:"dns_domain"`
	// Uplink is the host interface enslaved to the bridge, joining the same-named networks of
	// other hosts into one L2 segment; "" for a host-local network.
	Uplink string `json:"uplink,omitempty" yaml:"uplink,omitempty"`
	// HostAccess lets instances reach every service of the host; without it they reach only the
	// network's DHCP and DNS (and ICMP) on the host.
	HostAccess bool `json:"host_access" yaml:"host_access"`
	// UsedBy lists the instance NICs on the network, as "instance/nic".
	UsedBy []string `json:"used_by" yaml:"used_by"`
}

// NetworksPost is the body of POST /1.0/networks.
type NetworksPost struct {
	Name      string `json:"name"`
	Subnet    string `json:"subnet,omitempty"` // empty: pick a free /24
	NAT       *bool  `json:"nat,omitempty"`    // default true
	DNSDomain string `json:"dns_domain,omitempty"`
	// Uplink names an existing, unconfigured Ethernet interface of the host to enslave to the
	// bridge; it needs an explicit Subnet, the same on every host.
	Uplink string `json:"uplink,omitempty"`
	// HostAccess opens the host's own services (its API, SSH, ...) to the network's instances.
	HostAccess bool `json:"host_access,omitempty"`
}
