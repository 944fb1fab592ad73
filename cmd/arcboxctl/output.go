package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/arcbox/arcbox-agent/client"
)

// table writes rows of tab-separated cells as aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

func (t *table) row(cells ...string) {
	for i, cell := range cells {
		// A tab or newline in a value (a label, a message) would break
		// the columns.
		cells[i] = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return ' '
			}
			return r
		}, cell)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// writeJSON prints an answer's body as the agent sent it, one line.
func writeJSON(w io.Writer, body []byte) error {
	body = []byte(strings.TrimSpace(string(body)))
	_, err := fmt.Fprintf(w, "%s\n", body)
	return err
}

// check is client.Check for the generated answers: any non-2xx is a
// *client.Error with the agent's message.
func check[R interface {
	StatusCode() int
	GetBody() []byte
}](r R, err error) (R, error) {
	return client.Check(r, err)
}

// decodeAnswer decodes an answer's body: the generated client leaves its
// JSON200 nil for an answer whose Content-Type it does not expect (a
// proxy's, an older agent's), which must be an error, not a crash.
func decodeAnswer[T any](body []byte) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("the agent's answer: %w: %.200q", err, body)
	}
	return v, nil
}

// labels shows labels as k=v,k=v sorted by key; "" for none.
func labels(m *map[string]string) string {
	if m == nil || len(*m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(*m)) {
		parts = append(parts, k+"="+(*m)[k])
	}
	return strings.Join(parts, ",")
}

// ago shows how long before now Unix second t was, as people read it.
func ago(now time.Time, unix int64) string {
	if unix == 0 {
		return ""
	}
	d := now.Sub(time.Unix(unix, 0))
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return plural(int(d/time.Second), "second") + " ago"
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute") + " ago"
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour") + " ago"
	}
	return plural(int(d/(24*time.Hour)), "day") + " ago"
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// stamp shows Unix second t as a date and time in the local zone, with
// how long ago it was.
func stamp(now time.Time, unix int64) string {
	if unix == 0 {
		return ""
	}
	return time.Unix(unix, 0).In(now.Location()).Format("2006-01-02 15:04:05 MST") + " (" + ago(now, unix) + ")"
}

// bytesIEC shows a byte count in binary units ("1.5 GiB").
func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func ptr[T any](v T) *T { return &v }

// show prints an answer as -o asks: the agent's JSON as it sent it, or
// view's rendering of it for people.
func show[T any](c *cli, body []byte, view func(*T) error) error {
	if c.json() {
		return writeJSON(c.stdout, body)
	}
	answer, err := decodeAnswer[T](body)
	if err != nil {
		return err
	}
	return view(answer)
}

// showList is show for a list: with --quiet, the ids alone, one a line.
func showList[L any](c *cli, body []byte, quiet bool, ids func(L) []string, table func(L) error) error {
	return show(c, body, func(list *L) error {
		if !quiet {
			return table(*list)
		}
		for _, id := range ids(*list) {
			fmt.Fprintln(c.stdout, id)
		}
		return nil
	})
}
