package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"tandem/internal/errdefs"
	"tandem/internal/fsutil"
)

// Image is the store's record of one image.
type Image struct {
	// Fingerprint is the sha256 (hex) of the image file as imported.
	Fingerprint string      `json:"fingerprint"`
	Format      Format      `json:"format"`
	Compression Compression `json:"compression"`
	DiskFormat  string      `json:"disk_format,omitempty"` // qcow2 or raw, for disk images
	Filename    string      `json:"filename"`
	Size        int64       `json:"size"`         // of the image file
	ContentSize int64       `json:"content_size"` // sum of member sizes: what unpacking writes
	ImportedAt  time.Time   `json:"imported_at"`  // metadata.created_at is when it was built
	Metadata    Metadata    `json:"metadata"`
	// Aliases is filled from the alias table on read; aliases.json is the only record of them.
	Aliases []string `json:"aliases,omitempty"`
	// Users hold references (instances, pools) that keep the image from being deleted.
	Users []string `json:"users,omitempty"`
}

const (
	imagesDir   = "images"
	tmpDir      = "tmp"
	aliasesFile = "aliases.json"
	recordFile  = "image.json"
	// MinPrefix is the shortest fingerprint prefix Get accepts.
	MinPrefix = 12
)

// Store is a content-addressed image store rooted at a directory. It is safe for concurrent use; one
// process at a time may open a directory (it holds a lock file).
type Store struct {
	root string
	lock *os.File

	mu      sync.Mutex
	images  map[string]*Image // fingerprint -> record (without Aliases)
	aliases map[string]string // alias -> fingerprint
}

// Open opens (creating if needed) the store at root, clears staging leftovers of a crash and loads
// the records.
func Open(root string) (*Store, error) {
	for _, d := range []string{root, filepath.Join(root, imagesDir), filepath.Join(root, tmpDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The real absolute path: clearing tmp/ matches it against /proc/self/mountinfo.
	root, err := filepath.EvalSymlinks(root)
	if err == nil {
		root, err = filepath.Abs(root)
	}
	if err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(root, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, errdefs.Conflict("image store %s is in use by another process", root)
	}
	s := &Store{root: root, lock: lock, images: map[string]*Image{}, aliases: map[string]string{}}
	if err := s.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the store's lock.
func (s *Store) Close() error { return s.lock.Close() }

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) imageDir(fp string) string { return filepath.Join(s.root, imagesDir, fp) }

func (s *Store) load() error {
	tmp := filepath.Join(s.root, tmpDir)
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		// A build killed mid-debootstrap may have left proc or sys mounted in here.
		cleanupBuildDir(filepath.Join(tmp, e.Name()))
	}
	ents, err := os.ReadDir(filepath.Join(s.root, imagesDir))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !isFingerprint(e.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.imageDir(e.Name()), recordFile))
		var img Image
		if err == nil {
			err = json.Unmarshal(data, &img)
		}
		if err != nil || img.Fingerprint != e.Name() {
			slog.Warn("image: skipping unreadable image record", "fingerprint", e.Name(), "err", err)
			continue
		}
		img.Aliases = nil
		s.images[img.Fingerprint] = &img
	}
	data, err := os.ReadFile(filepath.Join(s.root, aliasesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = json.Unmarshal(data, &s.aliases)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", aliasesFile, err)
	}
	for a, fp := range s.aliases {
		if _, ok := s.images[fp]; !ok {
			delete(s.aliases, a) // a crash between removing an image and its aliases
		}
	}
	return nil
}

func isFingerprint(s string) bool { return len(s) == 64 && isHex(s) }

// resolveLocked finds a fingerprint by exact fingerprint, alias, or unique prefix of >= MinPrefix.
func (s *Store) resolveLocked(ref string) (string, error) {
	if _, ok := s.images[ref]; ok {
		return ref, nil
	}
	if fp, ok := s.aliases[ref]; ok {
		return fp, nil
	}
	if len(ref) >= MinPrefix && isHex(ref) {
		var found []string
		for fp := range s.images {
			if strings.HasPrefix(fp, ref) {
				found = append(found, fp)
			}
		}
		switch len(found) {
		case 1:
			return found[0], nil
		case 0:
		default:
			return "", errdefs.Invalid("image prefix %q is ambiguous (%d matches)", ref, len(found))
		}
	}
	return "", errdefs.NotFound("image %q not found", ref)
}

// copyLocked returns a caller-owned copy with the aliases filled in.
func (s *Store) copyLocked(fp string) *Image {
	img := *s.images[fp]
	img.Users = slices.Clone(img.Users)
	img.Metadata.Types = slices.Clone(img.Metadata.Types)
	img.Aliases = nil
	for a, f := range s.aliases {
		if f == fp {
			img.Aliases = append(img.Aliases, a)
		}
	}
	sort.Strings(img.Aliases)
	return &img
}

// Get returns the image named by a fingerprint, an alias, or a unique fingerprint prefix of at
// least 12 hex digits.
func (s *Store) Get(ref string) (*Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fp, err := s.resolveLocked(ref)
	if err != nil {
		return nil, err
	}
	return s.copyLocked(fp), nil
}

// List returns every image, newest import first.
func (s *Store) List() []*Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Image, 0, len(s.images))
	for fp := range s.images {
		out = append(out, s.copyLocked(fp))
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].ImportedAt.Equal(out[j].ImportedAt) {
			return out[i].ImportedAt.After(out[j].ImportedAt)
		}
		return out[i].Fingerprint < out[j].Fingerprint
	})
	return out
}

// Path returns the image file's path, for readers that need random access (never write to it).
func (s *Store) Path(ref string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fp, err := s.resolveLocked(ref)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.imageDir(fp), s.images[fp].Filename), nil
}

// openFile opens the image file under the lock, so a concurrent Delete cannot pull it away first
// (once open, the data stays readable even if the image is deleted).
func (s *Store) openFile(ref string) (*os.File, *Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fp, err := s.resolveLocked(ref)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.Open(filepath.Join(s.imageDir(fp), s.images[fp].Filename))
	if err != nil {
		return nil, nil, err
	}
	return f, s.copyLocked(fp), nil
}

// Delete removes an image and its aliases. An image with users is a Conflict.
func (s *Store) Delete(ref string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	fp, err := s.resolveLocked(ref)
	if err != nil {
		return err
	}
	if users := s.images[fp].Users; len(users) > 0 {
		return errdefs.Conflict("image %s is in use by %s", fp[:MinPrefix], strings.Join(users, ", "))
	}
	next := maps2(s.aliases, func(_, f string) bool { return f != fp })
	if len(next) != len(s.aliases) {
		if err := writeJSONAtomic(filepath.Join(s.root, aliasesFile), next); err != nil {
			return err
		}
		s.aliases = next
	}
	// Rename first so that a crash never leaves a half-removed image in images/.
	trash, err := os.MkdirTemp(filepath.Join(s.root, tmpDir), "delete-")
	if err != nil {
		return err
	}
	if err := os.Rename(s.imageDir(fp), filepath.Join(trash, fp)); err != nil {
		return err
	}
	delete(s.images, fp)
	if err := fsutil.SyncDir(filepath.Join(s.root, imagesDir)); err != nil {
		slog.Warn("image: fsync after delete", "err", err)
	}
	if err := os.RemoveAll(trash); err != nil {
		slog.Warn("image: cannot remove deleted image files", "path", trash, "err", err)
	}
	return nil
}

// maps2 copies the entries of m for which keep is true.
func maps2(m map[string]string, keep func(k, v string) bool) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		if keep(k, v) {
			out[k] = v
		}
	}
	return out
}

// AddAlias points a new alias at an image; an existing alias is errdefs.Exists.
func (s *Store) AddAlias(name, ref string) error { return s.setAlias(name, ref, false) }

// SetAlias points an alias at an image, moving it if it named another image.
func (s *Store) SetAlias(name, ref string) error { return s.setAlias(name, ref, true) }

func (s *Store) setAlias(name, ref string, move bool) error {
	if err := ValidateAlias(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fp, err := s.resolveLocked(ref)
	if err != nil {
		return err
	}
	if cur, ok := s.aliases[name]; ok && (cur == fp || !move) {
		if cur == fp {
			return nil
		}
		return errdefs.Exists("alias %q already exists (image %s)", name, cur[:MinPrefix])
	}
	next := maps2(s.aliases, func(string, string) bool { return true })
	next[name] = fp
	if err := writeJSONAtomic(filepath.Join(s.root, aliasesFile), next); err != nil {
		return err
	}
	s.aliases = next
	return nil
}

// DeleteAlias removes an alias (the image stays).
func (s *Store) DeleteAlias(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.aliases[name]; !ok {
		return errdefs.NotFound("alias %q not found", name)
	}
	next := maps2(s.aliases, func(k, _ string) bool { return k != name })
	if err := writeJSONAtomic(filepath.Join(s.root, aliasesFile), next); err != nil {
		return err
	}
	s.aliases = next
	return nil
}

// Ref records that user (e.g. "instance/c1", "pool/default") depends on the image; Delete refuses
// while any user remains. Referencing twice is a no-op. The users are persisted with the image.
func (s *Store) Ref(ref, user string) error {
	return s.updateUsers(ref, user, func(users []string) []string {
		if slices.Contains(users, user) {
			return users
		}
		return append(users, user)
	})
}

// Unref drops a reference taken by Ref; dropping one that is not held is a no-op.
func (s *Store) Unref(ref, user string) error {
	return s.updateUsers(ref, user, func(users []string) []string {
		return slices.DeleteFunc(users, func(u string) bool { return u == user })
	})
}

func (s *Store) updateUsers(ref, user string, f func([]string) []string) error {
	if user == "" {
		return errdefs.Invalid("empty image user")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fp, err := s.resolveLocked(ref)
	if err != nil {
		return err
	}
	rec := *s.images[fp]
	rec.Users = f(slices.Clone(rec.Users))
	if slices.Equal(rec.Users, s.images[fp].Users) {
		return nil
	}
	sort.Strings(rec.Users)
	if err := writeJSONAtomic(filepath.Join(s.imageDir(fp), recordFile), &rec); err != nil {
		return err
	}
	s.images[fp] = &rec
	return nil
}

// Resolve returns the fingerprint of the image ref names, checking that it can run as instanceType.
func (s *Store) Resolve(ref, instanceType string) (string, error) {
	img, err := s.Get(ref)
	if err != nil {
		return "", err
	}
	if img.Format == FormatDisk && instanceType != TypeVM {
		return "", errdefs.Invalid("image %q is a VM disk image: it cannot run as a %s (launch it with --vm)", ref, instanceType)
	}
	if !img.Metadata.Supports(instanceType) {
		return "", errdefs.Invalid("image %q cannot run as a %s (it supports: %s)", ref, instanceType, strings.Join(img.Metadata.Types, ", "))
	}
	return img.Fingerprint, nil
}
