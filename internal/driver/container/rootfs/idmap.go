// Package rootfs makes a container's private root filesystem: a copy of a shared, read-only image
// tree whose owners are shifted into the container's host id range, so that root inside a user
// namespace owns its files and nothing else. Shifting is done by chown, not idmapped mounts: the
// runc on our hosts (1.1) cannot make idmapped mounts.
package rootfs

// IDMap maps container ids to host ids: container id c is host id Base+c for c < Size. The zero
// IDMap is the identity (a privileged container).
type IDMap struct {
	Base uint32
	Size uint32
}

// overflowID is what an id outside the range becomes (nobody/nogroup, as the kernel shows it).
const overflowID = 65534

// Identity reports whether m maps every id to itself.
func (m IDMap) Identity() bool { return m.Size == 0 }

// ToHost maps a container id to its host id; ids the range cannot hold become nobody.
func (m IDMap) ToHost(c uint32) uint32 {
	if m.Identity() {
		return c
	}
	if c >= m.Size {
		c = overflowID
	}
	return m.Base + c
}

// ToContainer maps a host id back; host ids outside the range become nobody.
func (m IDMap) ToContainer(h uint32) uint32 {
	if m.Identity() {
		return h
	}
	if h < m.Base || h-m.Base >= m.Size {
		return overflowID
	}
	return h - m.Base
}
