package image

import (
	"bufio"
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultDebianMirror is used when the host's apt names no usable Debian mirror.
const DefaultDebianMirror = "http://deb.debian.org/debian"

// aptSource is one "deb" source, from either file syntax.
type aptSource struct {
	Types, URIs, Suites []string
}

// FindDebianMirror returns the mirror the host's apt uses for release: the first deb source that
// lists that suite, else the first that is not a security archive, else DefaultDebianMirror. root
// is the filesystem root holding etc/apt ("/" normally; tests pass a directory).
func FindDebianMirror(root, release string) string {
	srcs := readAptSources(root)
	usable := func(s aptSource) []string {
		var out []string
		for _, u := range s.URIs {
			if strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") || strings.HasPrefix(u, "file:") {
				out = append(out, strings.TrimSuffix(u, "/"))
			}
		}
		if !slices.Contains(s.Types, "deb") {
			return nil
		}
		return out
	}
	for _, s := range srcs {
		if u := usable(s); len(u) > 0 && slices.Contains(s.Suites, release) {
			return u[0]
		}
	}
	for _, s := range srcs {
		if u := usable(s); len(u) > 0 && !slices.ContainsFunc(s.Suites, func(x string) bool { return strings.HasSuffix(x, "-security") }) {
			return u[0]
		}
	}
	slog.Info("image: no Debian mirror in the host's apt sources; using the default", "mirror", DefaultDebianMirror)
	return DefaultDebianMirror
}

// readAptSources reads sources.list, sources.list.d/*.list and sources.list.d/*.sources (deb822).
func readAptSources(root string) []aptSource {
	var out []aptSource
	files := []string{filepath.Join(root, "etc/apt/sources.list")}
	lists, _ := filepath.Glob(filepath.Join(root, "etc/apt/sources.list.d/*.list"))
	files = append(files, lists...)
	for _, f := range files {
		if data, err := os.ReadFile(f); err == nil {
			out = append(out, parseOneLineSources(data)...)
		}
	}
	deb822, _ := filepath.Glob(filepath.Join(root, "etc/apt/sources.list.d/*.sources"))
	for _, f := range deb822 {
		if data, err := os.ReadFile(f); err == nil {
			out = append(out, parseDeb822Sources(data)...)
		}
	}
	return out
}

// parseOneLineSources reads "deb [options] URI suite [component...]" lines.
func parseOneLineSources(data []byte) []aptSource {
	var out []aptSource
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		typ := f[0]
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, aptSource{Types: []string{typ}, URIs: []string{f[0]}, Suites: []string{f[1]}})
	}
	return out
}

// parseDeb822Sources reads deb822 stanzas (Types:, URIs:, Suites:, Enabled:), separated by blank
// lines; a line starting with white space continues the previous field.
func parseDeb822Sources(data []byte) []aptSource {
	var out []aptSource
	fields := map[string]string{}
	last := ""
	flush := func() {
		if len(fields) > 0 && !strings.EqualFold(fields["enabled"], "no") {
			out = append(out, aptSource{
				Types: strings.Fields(fields["types"]), URIs: strings.Fields(fields["uris"]),
				Suites: strings.Fields(fields["suites"]),
			})
		}
		fields, last = map[string]string{}, ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "#"):
			continue
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				fields[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			fields[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}
