package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"tandem/api"
)

func init() {
	register(newImageCmd)
	register(newPublishCmd)
}

func newPublishCmd(a *app) *cobra.Command {
	var aliases []string
	cmd := &cobra.Command{
		Use: "publish INSTANCE [--alias NAME]", Short: "Make an image from a stopped instance", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.PublishInstance(ctx(cmd), args[0], aliases)
			if err != nil {
				return err
			}
			return a.reportImage(cmd, op, "Publishing "+args[0])
		},
	}
	cmd.Flags().StringSliceVar(&aliases, "alias", nil, "alias for the new image")
	return cmd
}

func newImageCmd(a *app) *cobra.Command {
	cmd := groupCmd("image", "Manage images: build, import, export, aliases")
	cmd.AddCommand(newImageListCmd(a), newImageInfoCmd(a), newImageBuildCmd(a), newImageImportCmd(a),
		newImageExportCmd(a), newImageDeleteCmd(a), newImageAliasCmd(a))
	return cmd
}

func shortFP(fp string) string {
	if len(fp) > 12 {
		return fp[:12]
	}
	return fp
}

func newImageListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List images", Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			imgs, err := c.GetImages(ctx(cmd))
			if err != nil {
				return err
			}
			return a.render(imgs, func(w io.Writer) error {
				t := newTable(w, "ALIASES", "FINGERPRINT", "OS", "RELEASE", "TYPES", "SIZE", "USED BY")
				for _, i := range imgs {
					t.row(strings.Join(i.Aliases, ","), shortFP(i.Fingerprint), i.OS, i.Release,
						strings.Join(i.Types, ","), humanBytes(uint64(i.Size)), fmt.Sprint(len(i.UsedBy)))
				}
				return t.flush()
			})
		},
	}
}

func newImageInfoCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "info IMAGE", Short: "Show an image (alias, fingerprint or prefix)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			img, err := c.GetImage(ctx(cmd), args[0])
			if err != nil {
				return err
			}
			return a.render(img, func(w io.Writer) error {
				fmt.Fprintf(w, "Fingerprint: %s\nFormat: %s\nSize: %s\nOS: %s %s (%s)\nDescription: %s\nTypes: %s\n",
					img.Fingerprint, img.Format, humanBytes(uint64(img.Size)), img.OS, img.Release, img.Architecture,
					img.Description, strings.Join(img.Types, ", "))
				fmt.Fprintf(w, "Aliases: %s\nUsed by: %s\nCreated: %s\nImported: %s\n", strings.Join(img.Aliases, ", "),
					strings.Join(img.UsedBy, ", "), formatTime(img.CreatedAt), formatTime(img.ImportedAt))
				return nil
			})
		},
	}
}

func newImageBuildCmd(a *app) *cobra.Command {
	var release string
	var aliases []string
	cmd := &cobra.Command{
		Use:   "build busybox|debian",
		Short: "Build an image offline: busybox from busybox-static, debian with debootstrap",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			op, err := c.CreateImage(ctx(cmd), api.ImagesPost{Build: args[0], Release: release, Aliases: aliases})
			if err != nil {
				return err
			}
			return a.reportImage(cmd, op, "Building "+args[0])
		},
	}
	cmd.Flags().StringVar(&release, "release", "", "Debian release (default bookworm)")
	cmd.Flags().StringSliceVar(&aliases, "alias", nil, "alias for the image (default: the builder's)")
	return cmd
}

// reportImage waits for an image operation and prints the fingerprint it produced.
func (a *app) reportImage(cmd *cobra.Command, op *api.Operation, what string) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	final, err := a.wait(ctx(cmd), c, op, what)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "Image %v ready\n", final.Metadata["fingerprint"])
	return nil
}

func newImageImportCmd(a *app) *cobra.Command {
	var aliases []string
	var sum string
	cmd := &cobra.Command{
		Use:   "import FILE|URL",
		Short: "Import an image file, or an http(s) URL (with --sha256)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			src := args[0]
			if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
				if sum == "" {
					return fmt.Errorf("importing from a URL needs --sha256")
				}
				op, err := c.CreateImage(ctx(cmd), api.ImagesPost{URL: src, SHA256: sum, Aliases: aliases})
				if err != nil {
					return err
				}
				return a.reportImage(cmd, op, "Importing")
			}
			f, err := os.Open(src)
			if err != nil {
				return err
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			var r io.Reader = f
			if a.tty {
				bar := progressbar.DefaultBytes(st.Size(), "Uploading "+src)
				r = io.TeeReader(f, bar)
				defer bar.Clear()
			}
			op, err := c.UploadImage(ctx(cmd), r, st.Size(), aliases, sum)
			if err != nil {
				return err
			}
			return a.reportImage(cmd, op, "Importing")
		},
	}
	cmd.Flags().StringSliceVar(&aliases, "alias", nil, "alias for the imported image")
	cmd.Flags().StringVar(&sum, "sha256", "", "expected sha256 of the image file")
	return cmd
}

func newImageExportCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "export IMAGE FILE", Short: "Write an image file, byte for byte as imported", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			tmp := args[1] + ".partial"
			f, err := os.Create(tmp)
			if err != nil {
				return err
			}
			defer os.Remove(tmp)
			h := sha256.New()
			fp, _, err := c.ExportImage(ctx(cmd), args[0], io.MultiWriter(f, h))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if got := hex.EncodeToString(h.Sum(nil)); got != fp {
				return fmt.Errorf("export of %s is corrupt: sha256 %s", fp, got)
			}
			if err := os.Rename(tmp, args[1]); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Exported %s to %s\n", fp, args[1])
			return nil
		},
	}
}

func newImageDeleteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use: "delete IMAGE...", Aliases: []string{"rm"}, Short: "Delete images no instance uses", Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			for _, ref := range args {
				if err := c.DeleteImage(ctx(cmd), ref); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func newImageAliasCmd(a *app) *cobra.Command {
	cmd := groupCmd("alias", "Manage image aliases")
	cmd.AddCommand(&cobra.Command{
		Use: "add NAME IMAGE", Short: "Point a new alias at an image", Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.AddImageAlias(ctx(cmd), args[0], args[1])
		},
	}, &cobra.Command{
		Use: "delete NAME", Aliases: []string{"rm"}, Short: "Remove an alias (the image stays)", Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.DeleteImageAlias(ctx(cmd), args[0])
		},
	})
	return cmd
}
