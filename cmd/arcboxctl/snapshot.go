package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/api"
)

func (c *cli) checkpointCmd() *cobra.Command {
	var name string
	var labelFlags []string
	cmd := &cobra.Command{
		Use:   "checkpoint SANDBOX",
		Short: "Snapshot a ready sandbox's files (frozen meanwhile) and print the snapshot's id",
		Long: `Snapshot a ready sandbox's files and request, with the sandbox frozen
meanwhile, and print the snapshot's id. Process state is not captured:
restore makes a new sandbox from the files.`,
		Args:              exactArgs(1, "a SANDBOX"),
		ValidArgsFunction: c.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.CheckpointRequest{}
			if name != "" {
				req.Name = &name
			}
			var err error
			if req.Labels, err = keyValues("--label", labelFlags); err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().CheckpointSandboxWithResponse(cmd.Context(), args[0], req))
			if err != nil {
				return err
			}
			if c.json() {
				return writeJSON(c.stdout, resp.Body)
			}
			snap, err := decodeAnswer[api.CheckpointResponse](resp.Body)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(c.stdout, snap.SnapshotId)
			return err
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "a name for people")
	cmd.Flags().StringArrayVarP(&labelFlags, "label", "l", nil, "a label of the snapshot, `KEY=VALUE` (repeatable)")
	return cmd
}

func (c *cli) restoreCmd() *cobra.Command {
	var id, network string
	var labelFlags []string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "restore SNAPSHOT",
		Short: "Make a new sandbox from a snapshot, ready on return, and print its id",
		Long: `Make a new sandbox from a snapshot's files, ready when this returns, and
print its id. It keeps the original's labels and TTL unless told.`,
		Args:              exactArgs(1, "a SNAPSHOT"),
		ValidArgsFunction: c.completeSnapshots(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.RestoreRequest{}
			if id != "" {
				req.Id = &id
			}
			var err error
			if req.Labels, err = keyValues("--label", labelFlags); err != nil {
				return err
			}
			if cmd.Flags().Changed("ttl") {
				if ttl < 0 || ttl%time.Second != 0 {
					return usagef("--ttl %s: want whole seconds", ttl)
				}
				req.TtlSeconds = ptr(int64(ttl / time.Second))
			}
			if network != "" {
				mode := api.NetworkSpecMode(network)
				if !mode.Valid() {
					return usagef("--network %q: want none or bridge", network)
				}
				req.NetworkOverride = &api.NetworkSpec{Mode: &mode}
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().RestoreSnapshotWithResponse(cmd.Context(), args[0], req))
			if err != nil {
				return err
			}
			if c.json() {
				return writeJSON(c.stdout, resp.Body)
			}
			restored, err := decodeAnswer[api.RestoreResponse](resp.Body)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(c.stdout, restored.Id)
			return err
		},
	}
	cmd.Flags().StringVar(&id, "id", "", "the new sandbox's id (default: the agent makes one)")
	cmd.Flags().StringArrayVarP(&labelFlags, "label", "l", nil, "a label of the new sandbox, `KEY=VALUE` (repeatable; default: the original's)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "remove the new sandbox this long after it is made (default: the original's; 0: never)")
	cmd.Flags().StringVar(&network, "network", "", "none or bridge (default: the original's)")
	_ = cmd.RegisterFlagCompletionFunc("network", cobra.FixedCompletions([]string{"none", "bridge"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func (c *cli) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Aliases: []string{"snapshots"},
		Short:   "List and remove snapshots (made by checkpoint)",
		Args:    groupArgs,
		RunE:    groupHelp,
	}
	cmd.AddCommand(c.snapshotLsCmd(), c.snapshotRmCmd())
	return cmd
}

func (c *cli) snapshotLsCmd() *cobra.Command {
	var sandbox string
	var labelFilters []string
	var quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List snapshots, filtered by sandbox and labels",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			params := &api.ListSnapshotsParams{}
			if sandbox != "" {
				params.SandboxId = &sandbox
			}
			label, err := labelFilter(labelFilters)
			if err != nil {
				return err
			}
			params.Label = label
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().ListSnapshotsWithResponse(cmd.Context(), params))
			if err != nil {
				return err
			}
			return showList(c, resp.Body, quiet, func(l api.SnapshotList) []string {
				ids := make([]string, len(l.Snapshots))
				for i, s := range l.Snapshots {
					ids[i] = s.Id
				}
				return ids
			}, func(l api.SnapshotList) error { return c.printSnapshots(l.Snapshots) })
		},
	}
	cmd.Flags().StringVar(&sandbox, "sandbox", "", "only this sandbox's snapshots")
	cmd.Flags().StringArrayVarP(&labelFilters, "label", "l", nil, "only snapshots with this label, `KEY=VALUE` (repeatable; all must match)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the ids only")
	return cmd
}

func (c *cli) printSnapshots(list []api.Snapshot) error {
	now := c.now()
	t := newTable(c.stdout, "ID", "SANDBOX", "NAME", "CREATED", "LABELS")
	for _, s := range list {
		t.row(s.Id, s.SandboxId, orDash(deref(s.Name)), ago(now, s.CreatedAt), orDash(labels(s.Labels)))
	}
	return t.flush()
}

func (c *cli) snapshotRmCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "rm SNAPSHOT...",
		Aliases:           []string{"remove"},
		Short:             "Remove snapshots",
		Args:              minArgs(1, "one SNAPSHOT or more"),
		ValidArgsFunction: c.completeSnapshots(-1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			return c.each(args, func(id string) error {
				_, err := check(cl.API().DeleteSnapshotWithResponse(cmd.Context(), id))
				return err
			})
		},
	}
}

// completeSnapshots completes the nth argument (every one, when n is -1)
// with the agent's snapshot ids.
func (c *cli) completeSnapshots(n int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if n >= 0 && len(args) >= n {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		cl, err := c.client()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
		defer cancel()
		resp, err := check(cl.API().ListSnapshotsWithResponse(ctx, &api.ListSnapshotsParams{}))
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		list, err := decodeAnswer[api.SnapshotList](resp.Body)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var ids []cobra.Completion
		for _, s := range list.Snapshots {
			ids = append(ids, cobra.CompletionWithDesc(s.Id, "of "+s.SandboxId))
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}
