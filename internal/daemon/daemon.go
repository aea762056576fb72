// Package daemon starts tandemd: opens the state, registers drivers, recovers instances and interrupted
// operations, serves the API, and shuts down leaving instances running.
package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"tandem/internal/events"
	"tandem/internal/fsutil"
	"tandem/internal/hostinfo"
	"tandem/internal/image"
	"tandem/internal/instance"
	"tandem/internal/logctx"
	"tandem/internal/migrate"
	"tandem/internal/network"
	"tandem/internal/operations"
	"tandem/internal/server"
	"tandem/internal/storage"
	"tandem/internal/store"
	"tandem/internal/trust"
)

// Config is what tandemd's flags set.
type Config struct {
	Dir    string
	Listen string // HTTPS address, empty for none
	// Driver is "auto" (the real drivers this host can run) or "fake" (for tests).
	Driver    string
	FakeDelay time.Duration
	// Networking turns on managed networks; DefaultNetwork also creates tandem0 and gives every new
	// instance without a NIC an eth0 on it.
	Networking     bool
	DefaultNetwork bool
	// Accel is the VM accelerator: auto, kvm or tcg.
	Accel string
	// VMUser is the user QEMU runs as (taps are made for it): "" for DefaultVMUser (root when it
	// does not exist), "root" for root.
	VMUser string
	// IDMapBase is where container uid/gid ranges start; daemons sharing a machine need apart ones.
	IDMapBase uint32
	// CRIU is the criu binary ("" finds it); CRIUTimeout the base deadline of one dump or
	// restore (0: the driver's default, 20 s, plus 1 s per 100 MiB of the container's memory).
	CRIU        string
	CRIUTimeout time.Duration
	// Recover re-adopts, at start, the instances a lost or replaced state file no longer knows,
	// from the record copies kept beside it.
	Recover bool
}

// SocketPath is where the API's unix socket lives in a daemon dir.
func SocketPath(dir string) string { return filepath.Join(dir, "unix.socket") }

// RunDir is a short per-daemon directory for pidfiles and sockets: unix socket paths must stay under
// 108 bytes, which a deep state dir would break. It is derived from the state dir so that several
// daemons on one machine never share one.
func RunDir(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join("/run/tandem", hex.EncodeToString(sum[:4]))
}

// Run serves until ctx is cancelled, then shuts down cleanly. Instances keep running.
func Run(ctx context.Context, cfg Config) error {
	// 0711: unprivileged container roots (unmapped uids) must be able to traverse to their rootfs;
	// nothing in the dir is listable or readable by others.
	if err := os.MkdirAll(cfg.Dir, 0o711); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o711); err != nil {
		return err
	}
	// The run dir too: an unprivileged QEMU (--vm-user) writes its pidfile and sockets below it.
	run := RunDir(cfg.Dir)
	if err := os.MkdirAll(run, 0o711); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	// And the moves' run dir: QEMU listens and connects in a dir of each move's below it.
	if err := os.MkdirAll(filepath.Join(run, "m"), 0o711); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	for _, d := range []string{filepath.Dir(run), run, filepath.Join(run, "m")} {
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	cfg.VMUser = vmUser(cfg.VMUser, lookupUser)
	// The socket path must fit a sockaddr_un.
	if len(SocketPath(cfg.Dir)) > 107 {
		return fmt.Errorf("state dir %s is too long: the socket path must be under 108 bytes", cfg.Dir)
	}
	st, err := store.Open(filepath.Join(cfg.Dir, "state.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	hub := events.NewHub()
	ops := operations.NewManager(st, hub)
	if err := ops.Recover(); err != nil {
		return fmt.Errorf("recover operations: %w", err)
	}
	images, err := image.Open(filepath.Join(cfg.Dir, "images"))
	if err != nil {
		return fmt.Errorf("open image store: %w", err)
	}
	defer images.Close()
	imageCache, err := image.NewRootfsCache(images, filepath.Join(cfg.Dir, "rootfs-cache"))
	if err != nil {
		return err
	}
	networks, err := startNetworks(ctx, cfg)
	if err != nil {
		return err
	}
	drivers, err := registerDrivers(cfg, imageCache, networks)
	if err != nil {
		return err
	}
	hostMemory := func() uint64 { total, _ := hostinfo.Memory(); return total }
	instances := instance.NewManager(st, drivers, ops, hub, hostMemory)
	instances.SetImages(images)
	volumes, err := startStorage(ctx, cfg)
	if err != nil {
		return err
	}
	defer volumes.Close()
	instances.SetVolumes(volumes)
	if networks != nil {
		defaultNet := ""
		if cfg.DefaultNetwork {
			defaultNet = network.DefaultName
		}
		instances.SetNetworks(networks, defaultNet)
	}
	host, _ := os.Hostname()
	cert, err := trust.EnsureKeyPair(cfg.Dir, host)
	if err != nil {
		return err
	}
	migrations := migrate.New(migrate.Config{Instances: instances, Images: images, Store: st, Cert: cert,
		Dir: filepath.Join(cfg.Dir, "migrations"), RunDir: filepath.Join(run, "m")})
	instances.SetMigrationRecovery(migrations)
	if cfg.Recover {
		names, err := instances.Readopt(ctx)
		if err != nil {
			return fmt.Errorf("re-adopt instances: %w", err)
		}
		logctx.From(ctx).Info("re-adopted instances from their record copies", "count", len(names), "names", names)
	}
	if err := instances.Recover(ctx); err != nil {
		return fmt.Errorf("recover instances: %w", err)
	}

	trusted := trust.Trusted{Dir: filepath.Join(cfg.Dir, "trust")}
	var addrs []string
	if cfg.Listen != "" {
		addrs = append(addrs, cfg.Listen)
	}
	srv := &server.Server{Trust: server.Trust{Store: st, Trusted: trusted, Cert: cert, Addresses: addrs},
		Instances: instances, Operations: ops, Events: hub, Drivers: drivers, Networks: networks, Storage: volumes,
		Images: images, ImageCache: imageCache, Migrations: migrations, Dir: cfg.Dir}
	// Handlers (event streams, waits) end when baseCtx does, so shutdown does not hang on them.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	httpSrv := &http.Server{
		Handler:           logRequests(srv.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
		// Connections are kept per client certificate so that revoking one closes them.
		ConnContext: server.ConnContext,
		ConnState:   srv.ConnState,
	}

	errc := make(chan error, 2)
	unixL, err := listenUnix(SocketPath(cfg.Dir))
	if err != nil {
		return err
	}
	go func() { errc <- httpSrv.Serve(unixL) }()
	logctx.From(ctx).Info("tandemd serving", "socket", SocketPath(cfg.Dir), "drivers", drivers.Names())

	if cfg.Listen != "" {
		tlsL, err := listenTLS(cfg.Listen, trusted.ServerConfig(cert))
		if err != nil {
			return err
		}
		go func() { errc <- httpSrv.Serve(tlsL) }()
		logctx.From(ctx).Info("tandemd serving HTTPS", "address", tlsL.Addr().String())
	}

	select {
	case <-ctx.Done():
		logctx.From(ctx).Info("shutting down; instances keep running")
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			logctx.From(ctx).Error("API server failed", "err", err)
		}
	}
	cancelBase()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	httpSrv.Shutdown(sctx)
	ops.Shutdown(10 * time.Second)
	// Drivers drop their connections to instances; the instances keep running.
	for _, name := range drivers.Names() {
		if d, _ := drivers.ByName(name); d != nil {
			if c, ok := d.(io.Closer); ok {
				c.Close()
			}
		}
	}
	return nil
}

// startStorage brings back the pools (re-mounting loop-backed ones), finishes or undoes volume changes
// a crash interrupted, and makes the default pool on first start.
func startStorage(ctx context.Context, cfg Config) (*storage.Manager, error) {
	id, err := hostID(cfg.Dir)
	if err != nil {
		return nil, err
	}
	sm, err := storage.NewManager(storage.Options{Dir: filepath.Join(cfg.Dir, "storage"), HostID: id})
	if err != nil {
		return nil, err
	}
	if err := sm.Recover(ctx); err != nil {
		sm.Close()
		return nil, fmt.Errorf("recover storage: %w", err)
	}
	if _, err := sm.EnsureDefault(ctx); err != nil {
		sm.Close()
		return nil, fmt.Errorf("default storage pool: %w", err)
	}
	return sm, nil
}

// hostID is this daemon's lasting identity among the hosts sharing a pool (made once, kept in the dir).
func hostID(dir string) (string, error) {
	path := filepath.Join(dir, "host-id")
	if data, err := os.ReadFile(path); err == nil && len(data) > 0 {
		return strings.TrimSpace(string(data)), nil
	}
	id := uuid.NewString()
	return id, fsutil.WriteFileAtomic(path, []byte(id+"\n"), 0o600)
}

// startNetworks brings back every managed network (bridges, rules, dnsmasq) before instances recover,
// and makes the default network on first start.
func startNetworks(ctx context.Context, cfg Config) (*network.Manager, error) {
	if !cfg.Networking {
		return nil, nil
	}
	nm, err := network.NewManager(network.Options{Dir: filepath.Join(cfg.Dir, "networks"),
		RunDir: filepath.Join(RunDir(cfg.Dir), "net"), TapUser: cfg.VMUser})
	if err != nil {
		return nil, err
	}
	if err := nm.Recover(ctx); err != nil {
		return nil, fmt.Errorf("recover networks: %w", err)
	}
	if cfg.DefaultNetwork {
		if _, err := nm.EnsureDefault(ctx); err != nil {
			return nil, fmt.Errorf("default network: %w", err)
		}
	}
	return nm, nil
}

// listenUnix serves on a root-only socket, replacing a stale one. The state file's lock, taken before
// this, already guarantees no other daemon uses this dir.
func listenUnix(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func listenTLS(addr string, tc *tls.Config) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return tls.NewListener(l, tc), nil
}
