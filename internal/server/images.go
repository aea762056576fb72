package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"tandem/api"
	"tandem/internal/errdefs"
	"tandem/internal/image"
	"tandem/internal/operations"
)

func (s *Server) registerImages(mux *http.ServeMux) {
	mux.HandleFunc("GET /1.0/images", s.listImages)
	mux.HandleFunc("POST /1.0/images", s.createImage)
	mux.HandleFunc("GET /1.0/images/{ref}", s.getImage)
	mux.HandleFunc("DELETE /1.0/images/{ref}", s.deleteImage)
	mux.HandleFunc("GET /1.0/images/{ref}/export", s.exportImage)
	mux.HandleFunc("POST /1.0/images/aliases", s.addImageAlias)
	mux.HandleFunc("DELETE /1.0/images/aliases/{name}", s.deleteImageAlias)
	mux.HandleFunc("POST /1.0/instances/{name}/publish", s.publishInstance)
}

func (s *Server) publishInstance(w http.ResponseWriter, r *http.Request) {
	var req api.InstancePublishPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	for _, a := range req.Aliases {
		if err := image.ValidateAlias(a); err != nil {
			writeError(w, err)
			return
		}
	}
	op, err := s.Instances.Publish(r.Context(), r.PathValue("name"), req.Aliases)
	if err != nil {
		writeError(w, err)
		return
	}
	writeOperation(w, op)
}

func imageView(img *image.Image) api.Image {
	m := img.Metadata
	v := api.Image{Fingerprint: img.Fingerprint, Format: string(img.Format), Size: img.Size, OS: m.OS,
		Release: m.Release, Architecture: m.Architecture, Description: m.Description, Types: m.Types,
		KernelCmdline: m.KernelCmdline, ShutdownSignal: m.ShutdownSignal, Firmware: m.Firmware,
		Aliases: img.Aliases, UsedBy: img.Users, CreatedAt: m.CreatedAt, ImportedAt: img.ImportedAt}
	if v.Aliases == nil {
		v.Aliases = []string{}
	}
	if v.UsedBy == nil {
		v.UsedBy = []string{}
	}
	return v
}

func (s *Server) listImages(w http.ResponseWriter, r *http.Request) {
	out := []api.Image{}
	for _, img := range s.Images.List() {
		out = append(out, imageView(img))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getImage(w http.ResponseWriter, r *http.Request) {
	img, err := s.Images.Get(r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, imageView(img))
}

// createImage imports an uploaded file (application/octet-stream), a URL, or runs a builder.
func (s *Server) createImage(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") == "application/octet-stream" {
		s.uploadImage(w, r)
		return
	}
	var req api.ImagesPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	var desc string
	var run func(ctx context.Context) (*image.Image, error)
	switch {
	case req.URL != "" && req.Build != "":
		writeError(w, errdefs.Invalid("give either url or build, not both"))
		return
	case req.URL != "":
		if req.SHA256 == "" {
			writeError(w, errdefs.Invalid("an import from a URL needs its sha256"))
			return
		}
		desc = "Importing image from " + req.URL
		run = func(ctx context.Context) (*image.Image, error) {
			return s.Images.ImportURL(ctx, req.URL, req.SHA256, image.ImportOptions{Aliases: req.Aliases})
		}
	case req.Build == "busybox" || req.Build == "debian":
		desc = "Building image " + req.Build
		run = func(ctx context.Context) (*image.Image, error) {
			return s.Images.Build(ctx, image.BuildOptions{Kind: req.Build, Release: req.Release, Aliases: req.Aliases})
		}
	case req.Build != "":
		writeError(w, errdefs.Invalid("unknown image builder %q (want busybox or debian)", req.Build))
		return
	default:
		writeError(w, errdefs.Invalid("give url and sha256, build, or upload the file as application/octet-stream"))
		return
	}
	writeOperation(w, s.runImageOp(desc, run))
}

// runImageOp runs an image import in an operation whose metadata names the result.
func (s *Server) runImageOp(desc string, run func(ctx context.Context) (*image.Image, error)) *api.Operation {
	op := s.Operations.New(desc, "/1.0/images")
	return s.Operations.Run(op, func(ctx context.Context, op *operations.Op) error {
		img, err := run(ctx)
		if err != nil {
			return err
		}
		op.SetMetadata("fingerprint", img.Fingerprint)
		s.Events.Publish(api.EventLifecycle, api.LifecycleEvent{Action: "image-created", Source: "/1.0/images/" + img.Fingerprint})
		return nil
	})
}

// uploadImage stages the request body in a file (the upload is bounded by the store's size cap),
// then imports it in an operation.
func (s *Server) uploadImage(w http.ResponseWriter, r *http.Request) {
	opts := image.ImportOptions{SHA256: r.Header.Get(api.HeaderImageSHA256)}
	if a := r.Header.Get(api.HeaderImageAliases); a != "" {
		opts.Aliases = strings.Split(a, ",")
		for _, alias := range opts.Aliases {
			if err := image.ValidateAlias(alias); err != nil {
				writeError(w, err)
				return
			}
		}
	}
	if r.ContentLength > image.DefaultMaxImageSize {
		writeError(w, fmt.Errorf("%w: image is larger than %d bytes", errdefs.ErrTooLarge, image.DefaultMaxImageSize))
		return
	}
	staged, err := os.CreateTemp(s.Images.Root(), "upload-*")
	if err != nil {
		writeError(w, err)
		return
	}
	body := http.MaxBytesReader(w, r.Body, image.DefaultMaxImageSize)
	_, err = io.Copy(staged, body)
	staged.Close()
	if err != nil {
		os.Remove(staged.Name())
		if statusOf(err) != http.StatusRequestEntityTooLarge {
			err = errdefs.Invalid("upload interrupted: %v", err)
		}
		writeError(w, err)
		return
	}
	writeOperation(w, s.runImageOp("Importing uploaded image", func(ctx context.Context) (*image.Image, error) {
		defer os.Remove(staged.Name())
		return s.Images.ImportFile(ctx, staged.Name(), opts)
	}))
}

func (s *Server) exportImage(w http.ResponseWriter, r *http.Request) {
	img, err := s.Images.Get(r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(img.Size, 10))
	w.Header().Set(api.HeaderImageSHA256, img.Fingerprint)
	// Headers are gone once the body starts: a failure now can only cut the stream short, which the
	// client notices from the length and the checksum.
	s.Images.Export(r.Context(), img.Fingerprint, w)
}

func (s *Server) deleteImage(w http.ResponseWriter, r *http.Request) {
	img, err := s.Images.Get(r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.Images.Delete(img.Fingerprint); err != nil {
		writeError(w, err)
		return
	}
	if s.ImageCache != nil {
		s.ImageCache.Forget(img.Fingerprint)
	}
	s.Events.Publish(api.EventLifecycle, api.LifecycleEvent{Action: "image-deleted", Source: "/1.0/images/" + img.Fingerprint})
	writeJSON(w, http.StatusOK, map[string]string{})
}

func (s *Server) addImageAlias(w http.ResponseWriter, r *http.Request) {
	var req api.ImageAliasesPost
	if err := decode(w, r, &req); err != nil {
		writeError(w, err)
		return
	}
	if err := s.Images.AddAlias(req.Name, req.Target); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{})
}

func (s *Server) deleteImageAlias(w http.ResponseWriter, r *http.Request) {
	if err := s.Images.DeleteAlias(r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{})
}
