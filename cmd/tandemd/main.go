// tandemd is the tandem daemon: it runs VMs and system containers on this host behind a REST API.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"tandem/internal/daemon"
	"tandem/internal/driver/container"
	"tandem/internal/driver/vm"
	"tandem/internal/logctx"
)

func main() {
	// A container's shim is this binary re-executed: it must take over before anything else runs.
	container.MaybeRunShim()
	vm.MaybeRunConsoleLog()

	var cfg daemon.Config
	var logLevel string
	flag.StringVar(&cfg.Dir, "dir", envOr("TANDEM_DIR", "/var/lib/tandem"), "state directory of this host (several daemons need several dirs)")
	flag.StringVar(&cfg.Listen, "listen", "", "also serve HTTPS with client certificates on this address (host:port)")
	flag.StringVar(&cfg.Driver, "driver", "auto", "drivers to use: auto (what this host can run) or fake (testing)")
	flag.DurationVar(&cfg.FakeDelay, "fake-delay", 0, "with --driver=fake, how long create/start/stop take")
	flag.BoolVar(&cfg.Networking, "network", true, "manage networks (bridges, NAT, DHCP, DNS)")
	flag.BoolVar(&cfg.Recover, "recover", false, "re-adopt the instances a lost or replaced state.db no longer knows (from their record copies)")
	flag.BoolVar(&cfg.DefaultNetwork, "default-network", true, "create the tandem0 network and give new instances a NIC on it")
	flag.StringVar(&cfg.Accel, "accel", "auto", "VM accelerator: auto (KVM when usable), kvm or tcg")
	flag.StringVar(&cfg.VMUser, "vm-user", "", "run QEMU as this user (default: tandem-qemu, made by scripts/setup.sh; root, with a warning, if it does not exist; \"root\" for root)")
	flag.StringVar(&cfg.CRIU, "criu", "", "the criu binary for checkpoints and live container moves (default: criu in PATH or /usr/local/sbin)")
	flag.DurationVar(&cfg.CRIUTimeout, "criu-timeout", 0, "base deadline of one CRIU dump or restore, plus 1s per 100 MiB of the container's memory (default 20s)")
	idBase := flag.Uint("idmap-base", 1000000, "first host uid/gid of the ranges given to unprivileged containers")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "tandemd: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}

	cfg.IDMapBase = uint32(*idBase)
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "tandemd: bad --log-level %q\n", logLevel)
		os.Exit(2)
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		logctx.From(ctx).Error("tandemd failed", "err", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
