package daemon

import (
	"log/slog"
	"os/user"
)

// DefaultVMUser is the unprivileged user QEMU runs as unless --vm-user says otherwise;
// scripts/setup.sh creates it.
const DefaultVMUser = "tandem-qemu"

// vmUser picks the user QEMU runs as ("" is the daemon's own, root). An explicit name is taken as
// it is (the VM driver refuses one that does not exist); "root" asks for root. Unset, it is
// DefaultVMUser, or root with a warning when that user does not exist: a host set up by hand, or a
// developer's machine without scripts/setup.sh, still runs VMs, and the log says what it costs.
func vmUser(flag string, lookup func(string) error) string {
	switch flag {
	case "root":
		return ""
	case "":
		if err := lookup(DefaultVMUser); err != nil {
			slog.Warn("QEMU runs as root with every capability: there is no user "+DefaultVMUser+
				" (scripts/setup.sh creates it; --vm-user picks another)", "err", err)
			return ""
		}
		return DefaultVMUser
	}
	return flag
}

func lookupUser(name string) error {
	_, err := user.Lookup(name)
	return err
}
