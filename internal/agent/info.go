package agent

import (
	"bufio"
	"net"
	"os"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// guestInfo gathers what the host shows in `tandem info`.
func guestInfo() GuestInfo {
	info := GuestInfo{OS: osName(), AgentVersion: Version, Interfaces: map[string][]string{}}
	info.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		info.Kernel = unix.ByteSliceToString(u.Release[:])
		if info.OS == "" {
			info.OS = unix.ByteSliceToString(u.Sysname[:])
		}
	}
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsLoopback() {
				continue
			}
			info.IPs = append(info.IPs, ipn.IP.String())
			info.Interfaces[ifc.Name] = append(info.Interfaces[ifc.Name], ipn.String())
		}
	}
	sort.Strings(info.IPs)
	return info
}

// osName is os-release's PRETTY_NAME (NAME if that is missing), or "" when there is no os-release.
func osName() string {
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		defer f.Close()
		vals := map[string]string{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if ok {
				vals[k] = strings.Trim(v, `"'`)
			}
		}
		if v := vals["PRETTY_NAME"]; v != "" {
			return v
		}
		return vals["NAME"]
	}
	return ""
}
