package client

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"tandem/api"
)

func imagePath(ref string) string { return "/1.0/images/" + url.PathEscape(ref) }

// GetImages lists the images on the host.
func (c *Client) GetImages(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	err := c.do(ctx, http.MethodGet, "/1.0/images", nil, nil, &out)
	return out, err
}

// GetImage returns one image by fingerprint, prefix or alias.
func (c *Client) GetImage(ctx context.Context, ref string) (*api.Image, error) {
	var out api.Image
	if err := c.do(ctx, http.MethodGet, imagePath(ref), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// CreateImage imports from a URL or runs a builder; it returns the operation.
func (c *Client) CreateImage(ctx context.Context, req api.ImagesPost) (*api.Operation, error) {
	var out api.Operation
	if err := c.do(ctx, http.MethodPost, "/1.0/images", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UploadImage sends an image file (size bytes, -1 if unknown) to be imported; sha256 may be empty.
func (c *Client) UploadImage(ctx context.Context, r io.Reader, size int64, aliases []string, sha256 string) (*api.Operation, error) {
	h := http.Header{}
	h.Set("Content-Type", "application/octet-stream")
	if len(aliases) > 0 {
		h.Set(api.HeaderImageAliases, strings.Join(aliases, ","))
	}
	if sha256 != "" {
		h.Set(api.HeaderImageSHA256, sha256)
	}
	resp, err := c.sendRaw(ctx, http.MethodPost, c.base+"/1.0/images", r, size, h)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var op api.Operation
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBody)).Decode(&op); err != nil {
		return nil, fmt.Errorf("upload image: invalid response: %w", err)
	}
	return &op, nil
}

// ExportImage streams an image file into w and returns its fingerprint and size as the daemon
// announced them, for the caller to check.
func (c *Client) ExportImage(ctx context.Context, ref string, w io.Writer) (fingerprint string, size int64, err error) {
	resp, err := c.sendRaw(ctx, http.MethodGet, c.base+imagePath(ref)+"/export", nil, -1, nil)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return "", n, fmt.Errorf("export image: %w", err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return "", n, fmt.Errorf("export image: got %d of %d bytes", n, resp.ContentLength)
	}
	return resp.Header.Get(api.HeaderImageSHA256), n, nil
}

// DeleteImage deletes an image no instance uses.
func (c *Client) DeleteImage(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, imagePath(ref), nil, nil, nil)
}

// AddImageAlias points a new alias at an image.
func (c *Client) AddImageAlias(ctx context.Context, name, target string) error {
	return c.do(ctx, http.MethodPost, "/1.0/images/aliases", nil, api.ImageAliasesPost{Name: name, Target: target}, nil)
}

// DeleteImageAlias removes an alias (not the image).
func (c *Client) DeleteImageAlias(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/1.0/images/aliases/"+url.PathEscape(name), nil, nil, nil)
}

// PublishInstance makes an image from a stopped instance; the operation's metadata names it.
func (c *Client) PublishInstance(ctx context.Context, name string, aliases []string) (*api.Operation, error) {
	var out api.Operation
	if err := c.do(ctx, http.MethodPost, instancePath(name)+"/publish", nil, api.InstancePublishPost{Aliases: aliases}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
