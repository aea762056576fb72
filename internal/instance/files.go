package instance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"tandem/internal/driver"
	"tandem/internal/errdefs"
)

// checkGuestPath accepts an absolute path without NUL; it is resolved inside the instance, never here.
func checkGuestPath(p string) error {
	if !path.IsAbs(p) || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return errdefs.Invalid("file path %q: want an absolute path inside the instance", p)
	}
	return nil
}

// PushFile writes a file inside a running instance: through the driver's own file transfer (a VM's
// agent) or, failing that, by running cat inside it.
func (m *Manager) PushFile(ctx context.Context, name, p string, r io.Reader, opts driver.FileOpts) error {
	if err := checkGuestPath(p); err != nil {
		return err
	}
	drv, h, err := m.running(ctx, name)
	if err != nil {
		return err
	}
	if f, ok := drv.(driver.Filer); ok {
		return f.PushFile(ctx, h, p, r, opts)
	}
	ex, ok := drv.(driver.Execer)
	if !ok {
		return errdefs.Invalid("instance %q cannot take files", name)
	}
	mode := opts.Mode
	if mode == 0 {
		mode = 0o644
	}
	// The path is passed as an argument, never spliced into the script.
	script := fmt.Sprintf(`cat > "$1" && chmod %o "$1" && chown %d:%d "$1"`, mode, opts.UID, opts.GID)
	var errOut bytes.Buffer
	code, err := ex.Exec(ctx, h, driver.ExecRequest{Cmd: []string{"sh", "-c", script, "sh", p}, Stdin: r, Stderr: &errOut})
	if err != nil {
		return err
	}
	if code != 0 {
		return errdefs.Invalid("write %s in %s: %s", p, name, strings.TrimSpace(errOut.String()))
	}
	return nil
}

// PullFile reads a file from inside a running instance.
func (m *Manager) PullFile(ctx context.Context, name, p string, w io.Writer) (driver.FileInfo, error) {
	if err := checkGuestPath(p); err != nil {
		return driver.FileInfo{}, err
	}
	drv, h, err := m.running(ctx, name)
	if err != nil {
		return driver.FileInfo{}, err
	}
	if f, ok := drv.(driver.Filer); ok {
		return f.PullFile(ctx, h, p, w)
	}
	ex, ok := drv.(driver.Execer)
	if !ok {
		return driver.FileInfo{}, errdefs.Invalid("instance %q cannot give files", name)
	}
	var stat, errOut bytes.Buffer
	code, err := ex.Exec(ctx, h, driver.ExecRequest{Cmd: []string{"stat", "-L", "-c", "%F %a %u %g %s", p}, Stdout: &stat, Stderr: &errOut})
	if err != nil {
		return driver.FileInfo{}, err
	}
	if code != 0 {
		return driver.FileInfo{}, errdefs.NotFound("%s in %s: %s", p, name, strings.TrimSpace(errOut.String()))
	}
	info, err := parseStat(stat.String())
	if err != nil {
		return driver.FileInfo{}, err
	}
	code, err = ex.Exec(ctx, h, driver.ExecRequest{Cmd: []string{"cat", p}, Stdout: w, Stderr: &errOut})
	if err == nil && code != 0 {
		err = fmt.Errorf("read %s in %s: %s", p, name, strings.TrimSpace(errOut.String()))
	}
	return info, err
}

// parseStat reads `stat -c '%F %a %u %g %s'`; the file type may be several words.
func parseStat(out string) (driver.FileInfo, error) {
	f := strings.Fields(out)
	if len(f) < 5 {
		return driver.FileInfo{}, fmt.Errorf("unexpected stat output %q", out)
	}
	n := len(f)
	if typ := strings.Join(f[:n-4], " "); typ != "regular file" && typ != "regular empty file" {
		return driver.FileInfo{}, errdefs.Invalid("not a regular file (%s)", typ)
	}
	mode, err1 := strconv.ParseUint(f[n-4], 8, 32)
	uid, err2 := strconv.Atoi(f[n-3])
	gid, err3 := strconv.Atoi(f[n-2])
	size, err4 := strconv.ParseInt(f[n-1], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
		return driver.FileInfo{}, fmt.Errorf("unexpected stat output %q", out)
	}
	return driver.FileInfo{Mode: uint32(mode), UID: uid, GID: gid, Size: size}, nil
}
