package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

const eventsLong = `Print the agent's events: sandboxes' lifecycles and runs, listening ports,
the runtime's start phases, image pulls. Each has a seq that only grows.

Without -f, print the events the agent keeps (after --since SEQ) and end.
With -f, follow: live from now, or after --since SEQ when given (0: every
event kept), reconnecting without losing or repeating one. A --since
older than what the agent keeps is refused, saying where its journal
begins. -o json prints each event as the agent sent it, one per line.`

// eventFilter says which events events prints.
type eventFilter struct {
	follow  bool
	since   int64
	sandbox string
	action  string
}

func (f eventFilter) match(ev api.Event) bool {
	return (f.sandbox == "" || ev.SandboxId == f.sandbox) && (f.action == "" || string(ev.Action) == f.action)
}

func (c *cli) eventsCmd() *cobra.Command {
	var f eventFilter
	cmd := &cobra.Command{
		Use:   "events [-f] [--since SEQ]",
		Short: "Print the agent's events; -f follows them",
		Long:  eventsLong,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.since < 0 {
				return usagef("--since %d: want a seq, 0 or more", f.since)
			}
			return c.events(cmd.Context(), f, cmd.Flags().Changed("since"))
		},
	}
	cmd.Flags().BoolVarP(&f.follow, "follow", "f", false, "keep printing events as they happen")
	cmd.Flags().Int64Var(&f.since, "since", 0, "only events after this seq")
	cmd.Flags().StringVar(&f.sandbox, "sandbox", "", "only this sandbox's events")
	cmd.Flags().StringVar(&f.action, "action", "", "only events with this action (created, ready, run.exited, port.open, runtime.phase, image.pull...)")
	return cmd
}

func (c *cli) events(ctx context.Context, f eventFilter, sinceSet bool) error {
	// With -o json each event is printed as it came: the observer sees
	// the raw message just before the loop gets it decoded.
	var raw []byte
	cl, err := c.client(client.WithObserver(func(schema string, msg []byte) {
		if schema == "Event" {
			raw = append(raw[:0], msg...)
		}
	}))
	if err != nil {
		return err
	}
	o := client.EventsOptions{}
	until := int64(-1) // without -f: the newest seq when asked
	if f.follow {
		// The agent filters: only what is printed comes.
		o.ID, o.Action = f.sandbox, api.EventAction(f.action)
		if sinceSet {
			o.After = &f.since
		}
	} else {
		// Every event comes, so that the one with the newest seq shows
		// where the journal ended.
		if until, err = lastSeq(ctx, cl); err != nil {
			return err
		}
		if until == f.since {
			return nil
		}
		o.After = &f.since
	}
	w := bufio.NewWriter(c.stdout)
	defer w.Flush()
	for ev, err := range cl.Events(ctx, o) {
		if err != nil {
			return err
		}
		if until >= 0 && ev.Seq > until {
			return nil
		}
		if f.match(ev) {
			if c.json() {
				fmt.Fprintf(w, "%s\n", raw)
			} else {
				writeEvent(w, ev)
			}
			if f.follow {
				if err := w.Flush(); err != nil {
					return err
				}
			}
		}
		if until >= 0 && ev.Seq >= until {
			return nil
		}
	}
	return nil
}

// writeEvent prints an event as one line: seq, time, action, sandbox and
// attributes sorted by name.
func writeEvent(w io.Writer, ev api.Event) {
	var attrs []string
	a := deref(ev.Attributes)
	for _, k := range slices.Sorted(maps.Keys(a)) {
		attrs = append(attrs, k+"="+quoteIfNeeded(a[k]))
	}
	at := time.Unix(0, ev.Timestamp).Format("2006-01-02T15:04:05.000")
	line := fmt.Sprintf("%-6d %s  %-13s %-16s %s", ev.Seq, at, ev.Action, orDash(ev.SandboxId), strings.Join(attrs, " "))
	fmt.Fprintln(w, strings.TrimRight(line, " "))
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\n\"=") {
		return strconv.Quote(s)
	}
	return s
}

// lastSeq is the newest seq the agent's event journal assigned, from its
// metrics: where a replay that does not follow ends.
func lastSeq(ctx context.Context, cl *client.Client) (int64, error) {
	resp, err := check(cl.API().GetMetricsWithResponse(ctx))
	if err != nil {
		return 0, err
	}
	const name = "arcbox_agent_event_journal_last_seq "
	for line := range bytes.Lines(resp.Body) {
		if v, ok := bytes.CutPrefix(line, []byte(name)); ok {
			f, err := strconv.ParseFloat(string(bytes.TrimSpace(v)), 64)
			if err != nil {
				return 0, fmt.Errorf("the agent's metrics: %s: %w", strings.TrimSpace(string(line)), err)
			}
			return int64(f), nil
		}
	}
	return 0, fmt.Errorf("the agent's metrics have no %s: it keeps no event journal", strings.TrimSpace(name))
}
