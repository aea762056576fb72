package rootfs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"

	"golang.org/x/sys/unix"
)

// File capabilities and POSIX ACLs carry ids inside their xattr values; both are rewritten with
// the owners, else a shifted container sees capabilities of host root (ignored by the kernel) and
// ACL entries naming host users.
const (
	xattrCaps       = "security.capability"
	xattrACLAccess  = "system.posix_acl_access"
	xattrACLDefault = "system.posix_acl_default"

	vfsCapRevisionMask = 0xFF000000
	vfsCapRevision1    = 0x01000000
	vfsCapRevision2    = 0x02000000
	vfsCapRevision3    = 0x03000000
	vfsCapFlagsMask    = 0x000000FF

	aclUser  = 0x02
	aclGroup = 0x08
)

// keepXattr says which xattrs a container rootfs copy carries. security.selinux and trusted.* (e.g.
// overlayfs whiteouts) are host-side labels that mean nothing inside.
func keepXattr(name string) bool {
	return strings.HasPrefix(name, "user.") || name == xattrCaps || name == xattrACLAccess || name == xattrACLDefault
}

type xattr struct {
	name string
	val  []byte
}

// readXattrs reads the kept xattrs of src (not followed if a symlink), with ids in capabilities and
// ACLs passed through mapID (a container-side id in, a host id out) after toC (the source's ids
// to container-side ids). It reads before any chown, which clears security.capability.
func readXattrs(src string, toC, mapID func(uint32) uint32) ([]xattr, error) {
	names, err := listXattrs(src)
	if err != nil {
		return nil, err
	}
	var out []xattr
	for _, name := range names {
		if !keepXattr(name) {
			continue
		}
		val, err := getXattr(src, name)
		if err != nil {
			return nil, err
		}
		switch name {
		case xattrCaps:
			val = convertCaps(val, toC, mapID)
		case xattrACLAccess, xattrACLDefault:
			val = convertACL(val, func(id uint32) uint32 { return mapID(toC(id)) })
		}
		if val != nil {
			out = append(out, xattr{name, val})
		}
	}
	return out, nil
}

func writeXattrs(dst string, xs []xattr) error {
	for _, x := range xs {
		if err := unix.Lsetxattr(dst, x.name, x.val, 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) && strings.HasPrefix(x.name, "user.") {
				continue // the target filesystem cannot hold it (user.* on a symlink)
			}
			return &pathError{"setxattr " + x.name, dst, err}
		}
	}
	return nil
}

// convertCaps rewrites a security.capability value so that its root id is the container's root on
// the host: a v2 value (no root id) means "host root" and is ignored inside a user namespace, so a
// shifted copy gets a v3 value. A copy whose root is host root gets v2 back. Unknown values are
// dropped rather than copied with a wrong meaning.
func convertCaps(val []byte, toC, mapID func(uint32) uint32) []byte {
	if len(val) < 4 {
		return nil
	}
	magic := binary.LittleEndian.Uint32(val)
	var data []byte // permitted/inheritable pairs, padded to two
	rootid := uint32(0)
	switch magic & vfsCapRevisionMask {
	case vfsCapRevision1:
		if len(val) != 12 {
			return nil
		}
		data = append(append([]byte{}, val[4:12]...), make([]byte, 8)...)
	case vfsCapRevision2:
		if len(val) != 20 {
			return nil
		}
		data = val[4:20]
	case vfsCapRevision3:
		if len(val) != 24 {
			return nil
		}
		data = val[4:20]
		rootid = binary.LittleEndian.Uint32(val[20:])
	default:
		return nil
	}
	hostRoot := mapID(toC(rootid))
	flags := magic & vfsCapFlagsMask
	var out bytes.Buffer
	if hostRoot == 0 {
		binary.Write(&out, binary.LittleEndian, uint32(vfsCapRevision2)|flags)
		out.Write(data)
		return out.Bytes()
	}
	binary.Write(&out, binary.LittleEndian, uint32(vfsCapRevision3)|flags)
	out.Write(data)
	binary.Write(&out, binary.LittleEndian, hostRoot)
	return out.Bytes()
}

// convertACL maps the ids of named-user and named-group entries of a POSIX ACL xattr value:
// a 4-byte version, then 8-byte entries {tag u16, perm u16, id u32}.
func convertACL(val []byte, mapID func(uint32) uint32) []byte {
	if len(val) < 4 || (len(val)-4)%8 != 0 {
		return nil
	}
	out := append([]byte{}, val...)
	for off := 4; off < len(out); off += 8 {
		tag := binary.LittleEndian.Uint16(out[off:])
		if tag == aclUser || tag == aclGroup {
			id := binary.LittleEndian.Uint32(out[off+4:])
			binary.LittleEndian.PutUint32(out[off+4:], mapID(id))
		}
	}
	return out
}

func listXattrs(path string) ([]string, error) {
	size, err := unix.Llistxattr(path, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, &pathError{"listxattr", path, err}
	}
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		return nil, &pathError{"listxattr", path, err}
	}
	var names []string
	for _, name := range bytes.Split(buf[:n], []byte{0}) {
		if len(name) > 0 {
			names = append(names, string(name))
		}
	}
	return names, nil
}

func getXattr(path, name string) ([]byte, error) {
	size, err := unix.Lgetxattr(path, name, nil)
	if err != nil {
		return nil, &pathError{"getxattr " + name, path, err}
	}
	buf := make([]byte, size)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return nil, &pathError{"getxattr " + name, path, err}
	}
	return buf[:n], nil
}

type pathError struct {
	op, path string
	err      error
}

func (e *pathError) Error() string { return "rootfs: " + e.op + " " + e.path + ": " + e.err.Error() }
func (e *pathError) Unwrap() error { return e.err }
