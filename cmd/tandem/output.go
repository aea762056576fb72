package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

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
		c = strings.Join(strings.Fields(c), " ")
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
		fmt.Fprintf(w, "%s%s: %s\n", indent, k, m[k])
	}
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05 MST")
}

// humanBytes prints a size in IEC units: 512MiB, 23.4GiB.
func humanBytes(n uint64) string { return units.FormatSize(n) }
