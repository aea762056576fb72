// tandem-agent is tandem's guest agent: it runs inside a VM, started by the image's init, and serves
// the host's exec, info and file requests over a virtio-serial port. Build it static
// (CGO_ENABLED=0): it runs in guests with no libc, and it is carried in the VM's initramfs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"tandem/internal/agent"
)

func main() {
	port := flag.String("port", agent.PortName, "virtio-serial port name")
	device := flag.String("device", "", "serve on this device or file instead of looking the port up")
	power := flag.String("power-button", "auto", "act on the ACPI power button: on, off, or auto (on unless systemd runs)")
	flag.Parse()
	log.SetPrefix("tandem-agent: ")
	log.SetFlags(0)
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", agent.DefaultPath)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := agent.EnsureDevpts(); err != nil {
		log.Printf("mounting /dev/pts: %v (exec with a terminal will fail)", err)
	}
	if watchPower(*power) {
		go agent.WatchPowerButton(func() {
			if agent.ProcessRunning("acpid") {
				return // the image's acpid acts on the button (the busybox image runs one)
			}
			agent.Console("tandem-agent: power button pressed: powering off")
			if err := agent.PowerOff(); err != nil {
				log.Printf("poweroff: %v", err)
			}
		})
	}
	if err := serve(ctx, *port, *device); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

// watchPower: systemd's logind already handles the button; doing it twice would be harmless but noisy.
func watchPower(mode string) bool {
	switch mode {
	case "on":
		return true
	case "off":
		return false
	}
	_, err := os.Stat("/run/systemd/system")
	return err != nil
}

// serve keeps serving the port. A read of 0 bytes means no host is connected: wait and read again.
func serve(ctx context.Context, port, device string) error {
	path := device
	for path == "" {
		p, err := agent.FindPort(port)
		if err == nil {
			path = p
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	context.AfterFunc(ctx, func() { f.Close() })
	srv := &agent.Server{}
	for ctx.Err() == nil {
		err := srv.Serve(ctx, f)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return ctx.Err()
}
