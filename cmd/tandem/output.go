package main

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"tandem/internal/units"
)

// render prints v as JSON or YAML when --format asks for it, and otherwise calls human, which prints
// the table or the readable view that is the command's default.
func (a *app) render(v any, human func(w io.Writer) error) error {
	switch a.format {
	case formatJSON:
		return printJSON(a.stdout, v)
	case formatYAML:
		return printYAML(a.stdout, v)
	}
	return human(a.stdout)
}

// printJSON writes one compact JSON document per line, which is what scripts and jq want.
func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func printYAML(w io.Writer, v any) error {
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return err
	}
	return enc.Close()
}

// table writes aligned columns. Cells are cleaned so that a tab or newline in a value (an error text,
// say) cannot break the layout.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		c = strings.Join(strings.Fields(printable(c)), " ")
		if c == "" {
			c = "-"
		}
		cells[i] = c
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// sortedKeys returns a map's keys in order, so that output is stable from one run to the next.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// kvLines prints "  key: value" lines for a string map, indented.
func kvLines(w io.Writer, indent string, m map[string]string) {
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(w, "%s%s: %s\n", indent, printable(k), printable(m[k]))
	}
}

// escapeRE matches terminal escape sequences: CSI (colours, cursor moves), OSC (window titles,
// hyperlinks) up to its terminator, and the two-byte ones.
var escapeRE = regexp.MustCompile(`\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?|\x1b[@-Z\\-_]?`)

// printable makes text that a guest or a user controls (a hostname, an OS name, a config value)
// safe to print on a terminal: escape sequences and bidi overrides go, line breaks and tabs become
// spaces (a value cannot fake a line of its own), other control characters and invalid UTF-8
// become U+FFFD.
func printable(s string) string {
	if !strings.ContainsFunc(s, needsCleaning) {
		return s
	}
	s = escapeRE.ReplaceAllString(strings.ToValidUTF8(s, "\uFFFD"), "")
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case isBidiControl(r):
			return -1
		case unicode.IsControl(r):
			return '\uFFFD'
		}
		return r
	}, s)
}

func needsCleaning(r rune) bool {
	return unicode.IsControl(r) || isBidiControl(r) || r == utf8.RuneError
}

// isBidiControl: the embeddings, overrides and isolates that can make text read other than it is.
func isBidiControl(r rune) bool {
	return (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069') || r == '\u200e' || r == '\u200f'
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05 MST")
}

// humanBytes prints a size in IEC units: 512MiB, 23.4GiB.
func humanBytes(n uint64) string { return units.FormatSize(n) }
