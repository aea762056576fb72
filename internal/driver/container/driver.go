package container

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"tandem/internal/driver"
	"tandem/internal/driver/container/idmap"
	"tandem/internal/driver/container/rootfs"
	"tandem/internal/driver/container/runc"
	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// Name is the driver's registry name.
const Name = "container"

// Options configure the driver.
type Options struct {
	// Dir is the state root (e.g. <daemon dir>/containers): one bundle directory per container
	// (config.json, rootfs/, state.json, console.log, checkpoint/) and the id range file.
	Dir string
	// RunDir is a short directory for runc's state, pid files, unix sockets and the network
	// namespace bind mount (e.g. /run/tandem/<hash>). Socket paths must stay under 108 bytes, so
	// it may be at most 70 bytes long.
	RunDir string
	// Images gives the image root filesystems.
	Images driver.Images
	// Runc is the runc binary (default "runc" from PATH); CRIU is the criu binary runc uses for
	// checkpoint/restore (default: "criu" from PATH, /usr/local/sbin included).
	Runc string
	CRIU string
	// ShimBinary is the executable run with ShimArg as its first argument to start a container's
	// shim. Default /proc/self/exe: the daemon re-executes itself, so its main must call
	// MaybeRunShim first.
	ShimBinary string
	// CgroupParent is the cgroup under which containers get <CgroupParent>/<id> (default "tandem").
	CgroupParent string
	// LXCFS is where lxcfs is (or is to be) mounted (default /var/lib/lxcfs); NoLXCFS turns the
	// /proc overlays off. If lxcfs is installed but not running the driver starts it.
	LXCFS   string
	NoLXCFS bool
	// IDFirst and IDSize place the per-container uid/gid ranges (defaults 1000000 and 65536).
	IDFirst, IDSize uint32
	// ConsoleLogMax caps console.log before it rotates to console.log.1 (default 1 MiB).
	ConsoleLogMax int64
	// CRIUTimeout is the base deadline of one CRIU dump or restore (default 20 s); a second per
	// 100 MiB of the container's memory is added. A dump past it is killed (criuguard.go).
	CRIUTimeout time.Duration
	// PrepareNetwork, if set, is called once the container's network namespace exists
	// (bind-mounted at netnsPath), to plug its interfaces in (a veth per NIC, with the NIC's
	// name and MAC): on a boot before init runs; on a restore (Start after a stateful stop,
	// AbortDump, a migration's Restore) in the new, empty namespace CRIU made, before any process
	// or socket is restored; the driver then puts back the addresses and routes the namespace had
	// at the dump. It must work on any host the container may move to (the NIC's lease there).
	PrepareNetwork func(ctx context.Context, h *driver.Handle, netnsPath string) error
}

// Driver runs system containers with runc.
type Driver struct {
	opts Options
	runc *runc.Runc
	ids  *idmap.Allocator
	// version and availability are probed once.
	version, reason string
	criuPath        string
	lxcfsMu         sync.Mutex
	// lazyDumps are the lazy migration dumps in flight (*lazyDump by container id).
	lazyDumps sync.Map
	// probe is whether this host can checkpoint (criuprobe.go), set once probeDone is closed.
	probe     CheckpointSupport
	probeDone chan struct{}
}

var (
	_ driver.Driver   = (*Driver)(nil)
	_ driver.Pauser   = (*Driver)(nil)
	_ driver.Updater  = (*Driver)(nil)
	_ driver.Statter  = (*Driver)(nil)
	_ driver.Execer   = (*Driver)(nil)
	_ driver.Consoler = (*Driver)(nil)
	_ Checkpointer    = (*Driver)(nil)
)

// maxRunDir keeps RunDir/<16 hex>/console.sock under the 108-byte unix socket limit.
const maxRunDir = 70

// New makes the driver's directories and probes runc. A host without runc (or not root) still
// gets a driver, whose Info says why it is not available.
func New(opts Options) (*Driver, error) {
	if opts.Dir == "" || opts.RunDir == "" || opts.Images == nil {
		return nil, errors.New("container: Dir, RunDir and Images are required")
	}
	if len(opts.RunDir) > maxRunDir {
		return nil, fmt.Errorf("container: RunDir %q is %d bytes; at most %d keep unix socket paths short enough",
			opts.RunDir, len(opts.RunDir), maxRunDir)
	}
	if opts.Runc == "" {
		opts.Runc = "runc"
	}
	if opts.ShimBinary == "" {
		opts.ShimBinary = "/proc/self/exe"
	}
	if opts.CgroupParent == "" {
		opts.CgroupParent = "tandem"
	}
	if opts.LXCFS == "" {
		opts.LXCFS = "/var/lib/lxcfs"
	}
	if opts.IDFirst == 0 {
		opts.IDFirst = idmap.DefaultFirst
	}
	if opts.IDSize == 0 {
		opts.IDSize = idmap.DefaultSize
	}
	if opts.ConsoleLogMax == 0 {
		opts.ConsoleLogMax = 1 << 20
	}
	if opts.CRIUTimeout <= 0 {
		opts.CRIUTimeout = defaultCRIUTimeout
	}
	for _, dir := range []string{opts.Dir, opts.RunDir, filepath.Join(opts.RunDir, "runc")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	// Container roots are unmapped uids on the host: they must be able to traverse to their
	// rootfs (runc mounts it from inside the user namespace). Nothing in Dir is readable to them.
	if err := os.Chmod(opts.Dir, 0o711); err != nil {
		return nil, err
	}
	ids, err := idmap.Open(filepath.Join(opts.Dir, "idmap.json"), opts.IDFirst, opts.IDSize)
	if err != nil {
		return nil, err
	}
	d := &Driver{opts: opts, ids: ids}
	d.probeHost()
	d.startCheckpointProbe()
	return d, nil
}

// probe finds runc and criu and reads runc's version.
func (d *Driver) probeHost() {
	path, err := exec.LookPath(d.opts.Runc)
	if err != nil {
		d.reason = fmt.Sprintf("runc not found: %v", err)
		d.version = "unknown"
		path = d.opts.Runc
	}
	d.runc = &runc.Runc{Path: path, Root: filepath.Join(d.opts.RunDir, "runc")}
	if d.reason == "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if d.version, err = d.runc.Version(ctx); err != nil {
			d.reason, d.version = fmt.Sprintf("runc --version: %v", err), "unknown"
		}
	}
	if d.reason == "" && os.Geteuid() != 0 {
		d.reason = "the container driver needs root"
	}
	if d.reason == "" {
		d.reason = checkTraversable(d.opts.Dir)
	}
	d.criuPath = findCRIU(d.opts.CRIU)
	d.runc.CRIU = d.criuPath
}

// checkTraversable returns why a container's root could not reach dir ("" if it can): every
// directory above it must be searchable by others (o+x).
func checkTraversable(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err.Error()
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err.Error()
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Sprintf("%s is mode %o: container roots (unmapped uids) cannot reach their rootfs under %s; chmod o+x %s",
				p, fi.Mode().Perm(), abs, p)
		}
		if p == "/" {
			return ""
		}
	}
}

// findCRIU looks in PATH and where tandem's setup installs it.
func findCRIU(want string) string {
	if want != "" {
		return want
	}
	if p, err := exec.LookPath("criu"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/local/sbin/criu", "/usr/sbin/criu"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// Info reports the driver and its capabilities; checkpoint needs CRIU and a host where it works.
func (d *Driver) Info(ctx context.Context) driver.Info {
	caps := []string{driver.CapPause, driver.CapExec, driver.CapConsole, driver.CapStats, driver.CapMigrate}
	info := driver.Info{Name: Name, Version: d.version, Available: d.reason == "", Reason: d.reason}
	// Cold moves need no CRIU; stateful stops and live moves need the probe's yes.
	if s := d.checkpointSupportNow(); s.Known && s.Available {
		caps = append(caps, driver.CapCheckpoint)
	} else {
		info.Missing = map[string]string{driver.CapCheckpoint: s.String()}
	}
	info.Capabilities = caps
	return info
}

// instState is what the driver persists per container, in <Dir>/<id>/state.json and mirrored in
// Handle.DriverState (the file is the source of truth: it exists even when a create was cut short).
type instState struct {
	ID             string       `json:"id"`
	IDs            rootfs.IDMap `json:"ids"` // zero: privileged
	ShutdownSignal string       `json:"shutdown_signal"`
	Image          string       `json:"image"`
	Fingerprint    string       `json:"fingerprint"`
	// Checkpoint is set by a stateful stop: Start restores from <bundle>/checkpoint.
	Checkpoint    bool `json:"checkpoint,omitempty"`
	CheckpointTCP bool `json:"checkpoint_tcp,omitempty"` // it carries TCP connections
	// CheckpointDir is where a migration's Dump put the images ("" is <bundle>/checkpoint).
	CheckpointDir string `json:"checkpoint_dir,omitempty"`
	// Migration is the source side of a live migration (migrate.go): "lazy" while a lazy Dump
	// serves pages, "dumped" after a Dump (Start or AbortDump resumes here from CheckpointDir),
	// "moved" after CommitDump (it runs elsewhere: Start is refused, Release drops it).
	Migration string    `json:"migration,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

// paths of one container.
type paths struct {
	bundle, rootfs, config, state, consoleLog, checkpoint, criuWork                               string
	run, shimConfig, shimLog, shimPid, initPid, exit, consoleSock, attachSock, seccompSock, netns string
	netnsHook, criuConf, lazySock                                                                 string
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func (d *Driver) paths(id string) paths {
	sum := sha256.Sum256([]byte(id))
	run := filepath.Join(d.opts.RunDir, hex.EncodeToString(sum[:8]))
	b := filepath.Join(d.opts.Dir, id)
	return paths{
		bundle: b, rootfs: filepath.Join(b, "rootfs"), config: filepath.Join(b, "config.json"),
		state: filepath.Join(b, "state.json"), consoleLog: filepath.Join(b, "console.log"),
		checkpoint: filepath.Join(b, "checkpoint"), criuWork: filepath.Join(b, "criu"),
		run: run, shimConfig: filepath.Join(run, "shim.json"), shimLog: filepath.Join(run, "shim.log"),
		shimPid: filepath.Join(run, "shim.pid"), initPid: filepath.Join(run, "init.pid"),
		exit: filepath.Join(run, "exit.json"), consoleSock: filepath.Join(run, "console.sock"),
		attachSock: filepath.Join(run, "attach.sock"), seccompSock: filepath.Join(run, "seccomp.sock"),
		netns: filepath.Join(run, "netns"), netnsHook: filepath.Join(run, "hook.sock"),
		criuConf: filepath.Join(run, "criu.conf"), lazySock: filepath.Join(b, "criu", "lazy-pages.socket"),
	}
}

func checkID(id string) error {
	if !idRE.MatchString(id) {
		return errdefs.Invalid("container: bad instance id %q", id)
	}
	return nil
}

// load reads a container's state; (nil, nil) means the driver has no such container.
func (d *Driver) load(id string) (*instState, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(d.paths(id).state)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st := &instState{}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("container %s: state: %w", id, err)
	}
	return st, nil
}

// mustLoad is load for calls that need an existing container.
func (d *Driver) mustLoad(h *driver.Handle) (*instState, error) {
	st, err := d.load(h.ID)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errdefs.NotFound("container %s does not exist", h.ID)
	}
	return st, nil
}

// save writes the state atomically and mirrors it into the handle.
func (d *Driver) save(h *driver.Handle, st *instState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(d.paths(st.ID).state, data, 0o600); err != nil {
		return err
	}
	if h != nil {
		h.DriverState = data
	}
	return nil
}

func (d *Driver) cgroupsPath(id string) string {
	return "/" + d.opts.CgroupParent + "/" + id
}

// available returns an Unavailable error when the driver cannot run containers here.
func (d *Driver) available() error {
	if d.reason != "" {
		return errdefs.Unavailable("container driver: %s", d.reason)
	}
	return nil
}
