package main

import (
	"bytes"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

func (c *cli) runtimeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "runtime",
		Short: "The guest's container runtime: containerd and dockerd on the data volume",
		Args:  groupArgs,
		RunE:  groupHelp,
	}
	cmd.AddCommand(c.runtimeEnsureCmd(), c.runtimeStatusCmd(), c.runtimeLogsCmd())
	return cmd
}

func (c *cli) runtimeEnsureCmd() *cobra.Command {
	var noStart bool
	cmd := &cobra.Command{
		Use:   "ensure",
		Short: "Start containerd and dockerd unless they run, showing each phase",
		Long: `Start containerd and dockerd unless they run, and say how it went:
started (this call started a daemon), reused (they ran already) or failed,
with the reason. The start's phases are shown as they end: live on a
terminal, one line each otherwise (on stderr; the result is on stdout).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// With -o json the stream's lines are printed as they come,
			// the result last.
			var opts []client.Option
			if c.json() {
				opts = append(opts, client.WithObserver(func(schema string, msg []byte) {
					if schema == "RuntimeEnsureProgress" {
						fmt.Fprintf(c.stdout, "%s\n", bytes.TrimSpace(msg))
					}
				}))
			}
			cl, err := c.client(opts...)
			if err != nil {
				return err
			}
			req := api.RuntimeEnsureRequest{}
			if noStart {
				req.StartIfNeeded = ptr(false)
			}
			prog := newProgress(c.stderr, !c.json() && c.terminal(c.stderr), "starting the runtime")
			resp, err := cl.EnsureRuntime(cmd.Context(), req, func(p api.RuntimeEnsureProgress) {
				prog.phase(string(deref(p.Phase)), time.Duration(deref(p.TookMs))*time.Millisecond, string(deref(p.Status)))
			})
			prog.stop()
			if err != nil {
				return err
			}
			if resp.Status == api.RuntimeEnsureResponseStatusFailed {
				return fmt.Errorf("the runtime did not start: %s", resp.Message)
			}
			if !c.json() {
				fmt.Fprintf(c.stdout, "%s: %s\n", resp.Status, oneLine(resp.Message))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noStart, "no-start", false, "only say whether the runtime is ready; start nothing")
	return cmd
}

func (c *cli) runtimeStatusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show whether containerd, dockerd and the data volume are ready",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().GetRuntimeStatusWithResponse(cmd.Context()))
			if err != nil {
				return err
			}
			return show(c, resp.Body, c.printRuntimeStatus)
		},
	}
}

func (c *cli) printRuntimeStatus(st *api.RuntimeStatus) error {
	t := newTable(c.stdout, "SERVICE", "STATUS", "DETAIL")
	for _, s := range st.Services {
		t.row(s.Name, string(s.Status), orDash(oneLine(s.Detail)))
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "\nDocker endpoint: %s\n", orDash(st.Endpoint))
	if st.Detail != "" {
		fmt.Fprintf(c.stdout, "Detail: %s\n", oneLine(st.Detail))
	}
	return nil
}

func (c *cli) runtimeLogsCmd() *cobra.Command {
	var follow bool
	var tail int
	cmd := &cobra.Command{
		Use:       "logs [-f] [--tail N] SERVICE",
		Short:     "Print a runtime daemon's log (containerd or dockerd)",
		Args:      exactArgs(1, "a SERVICE (containerd or dockerd)"),
		ValidArgs: []string{"containerd", "dockerd"},
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < 0 {
				return usagef("--tail %d: want 0 (all) or more", tail)
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			for line, err := range cl.RuntimeLogs(cmd.Context(), args[0], client.LogsOptions{Tail: tail, Follow: follow}) {
				if err != nil {
					return err
				}
				if _, err := fmt.Fprintln(c.stdout, line); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing lines as the daemon writes them")
	cmd.Flags().IntVar(&tail, "tail", 0, "start at the last N lines (0: the whole log)")
	return cmd
}
