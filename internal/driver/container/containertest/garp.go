package containertest

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// GARPWatch counts the gratuitous ARP frames (sender and target address the same) a host
// interface receives, by sender MAC and address: proof that a restored container announced itself.
type GARPWatch struct {
	fd     int
	mu     sync.Mutex
	counts map[string]int
	stop   chan struct{}
	done   chan struct{}
}

// WatchGARP starts counting on ifname (a bridge sees its ports' broadcasts).
func WatchGARP(ifname string) (*GARPWatch, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	proto := binary.NativeEndian.Uint16([]byte{unix.ETH_P_ARP >> 8, unix.ETH_P_ARP & 0xff}) // htons
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	w := &GARPWatch{fd: fd, counts: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go w.read()
	return w, nil
}

func (w *GARPWatch) read() {
	defer close(w.done)
	buf := make([]byte, 1500)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		n, _, err := unix.Recvfrom(w.fd, buf, 0)
		if err != nil || n < 42 || string(buf[28:32]) != string(buf[38:42]) {
			continue
		}
		key := fmt.Sprintf("%s %s", net.HardwareAddr(buf[22:28]), net.IP(buf[28:32]))
		w.mu.Lock()
		w.counts[key]++
		w.mu.Unlock()
	}
}

// Count returns how many announcements of ip at mac were seen so far.
func (w *GARPWatch) Count(mac, ip string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts[mac+" "+ip]
}

// Close stops counting.
func (w *GARPWatch) Close() {
	close(w.stop)
	<-w.done
	unix.Close(w.fd)
}
