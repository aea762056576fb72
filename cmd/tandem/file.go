package main

import (
	"fmt"
	"os"
	pathpkg "path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func init() { register(newFileCmd) }

// splitInstancePath reads NAME/PATH, the way Incus names a file inside an instance.
func splitInstancePath(arg string) (name, path string, err error) {
	name, rest, ok := strings.Cut(arg, "/")
	if !ok || name == "" || rest == "" {
		return "", "", fmt.Errorf("%q: want INSTANCE/PATH, e.g. c1/etc/hostname", arg)
	}
	return name, "/" + rest, nil
}

// pullDestination is where a pulled file lands: inside local if that is a directory (or names one
// with a trailing slash), as cp does; else local itself.
func pullDestination(local, remote string) (string, error) {
	st, err := os.Stat(local)
	switch {
	case err == nil && st.IsDir():
		base := pathpkg.Base(remote)
		if base == "/" || base == "." {
			return "", fmt.Errorf("%s names no file to put in directory %s", remote, local)
		}
		return filepath.Join(local, base), nil
	case strings.HasSuffix(local, "/"):
		return "", fmt.Errorf("%s is not a directory", local)
	}
	return local, nil
}

func newFileCmd(a *app) *cobra.Command {
	cmd := groupCmd("file", "Copy files into and out of running instances")
	var mode string
	var uid, gid int
	push := &cobra.Command{
		Use: "push LOCAL INSTANCE/PATH", Short: "Copy a local file into an instance", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, path, err := splitInstancePath(args[1])
			if err != nil {
				return err
			}
			m, err := strconv.ParseUint(mode, 8, 32)
			if err != nil {
				return fmt.Errorf("--mode %q: want octal like 0644", mode)
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.PushFile(ctx(cmd), name, path, f, st.Size(), uint32(m), uid, gid)
		},
	}
	push.Flags().StringVar(&mode, "mode", "0644", "file mode inside the instance")
	push.Flags().IntVar(&uid, "uid", 0, "owner inside the instance")
	push.Flags().IntVar(&gid, "gid", 0, "group inside the instance")
	pull := &cobra.Command{
		Use: "pull INSTANCE/PATH LOCAL", Short: "Copy a file out of an instance (LOCAL - for stdout)", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, path, err := splitInstancePath(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if args[1] == "-" {
				_, err := c.PullFile(ctx(cmd), name, path, a.stdout)
				return err
			}
			dest, err := pullDestination(args[1], path)
			if err != nil {
				return err
			}
			tmp := dest + ".partial"
			f, err := os.Create(tmp)
			if err != nil {
				return err
			}
			defer os.Remove(tmp)
			_, err = c.PullFile(ctx(cmd), name, path, f)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			return os.Rename(tmp, dest)
		},
	}
	cmd.AddCommand(push, pull)
	return cmd
}
