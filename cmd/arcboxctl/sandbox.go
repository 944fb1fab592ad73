package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

func (c *cli) sandboxCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sandboxes", "sb"},
		Short:   "Create, list, inspect, stop and remove sandboxes",
		Args:    groupArgs,
		RunE:    groupHelp,
	}
	cmd.AddCommand(c.sandboxCreateCmd(), c.sandboxLsCmd(), c.sandboxInspectCmd(), c.sandboxStopCmd(), c.sandboxRmCmd())
	return cmd
}

// createFlags are sandbox create's options.
type createFlags struct {
	id, image, network, workdir, user string
	labels, env, mounts               []string
	ttl                               time.Duration
	memoryMiB, pids                   int64
	cpus                              int32
	readOnly, noUserNS, detach        bool
}

func (c *cli) sandboxCreateCmd() *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create [flags] [-- CMD [ARG...]]",
		Short: "Create a sandbox and wait until it is ready, showing its image's pull",
		Long: `Create a sandbox and wait until it is ready (or failed), then print its id.
An image is pulled once and cached; its layers' progress is shown as it
comes, live on a terminal, a line per layer otherwise (on stderr). A CMD
after -- is started once the sandbox is ready. --detach prints the id at
once, while the sandbox starts.`,
		Example: `  arcboxctl sandbox create --id demo --label team=x --ttl 10m
  arcboxctl sandbox create --image registry.local:5000/app:1 --network bridge -- python3 app.py`,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args)
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			if f.detach {
				resp, err := check(cl.API().CreateSandboxWithResponse(cmd.Context(), req))
				if err != nil {
					return err
				}
				return c.printCreated(resp)
			}
			return c.createAndWait(cmd.Context(), cl, req)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.id, "id", "", "the sandbox's id (default: the agent makes one)")
	fl.StringVar(&f.image, "image", "", "an OCI image reference to make the root filesystem from (default: the agent's busybox root)")
	fl.StringArrayVarP(&f.labels, "label", "l", nil, "a label, `KEY=VALUE` (repeatable)")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "an environment variable of every run, `NAME=VALUE` (repeatable)")
	fl.StringArrayVar(&f.mounts, "mount", nil, "bind-mount a guest directory, `SOURCE:TARGET[:ro]` (repeatable)")
	fl.DurationVar(&f.ttl, "ttl", 0, "remove the sandbox this long after creation, in whole seconds (0: never)")
	fl.Int64Var(&f.memoryMiB, "memory", 0, "memory limit in MiB (0: the agent's default)")
	fl.Int32Var(&f.cpus, "cpus", 0, "CPUs (0: the agent's default)")
	fl.Int64Var(&f.pids, "pids", 0, "most processes and threads at once (0: the agent's default)")
	fl.StringVar(&f.network, "network", "", "none (loopback only) or bridge (an address on the sandbox bridge)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "the working directory of every run (absolute)")
	fl.StringVarP(&f.user, "user", "u", "", "the user of every run: uid[:gid] or name[:group]")
	fl.BoolVar(&f.readOnly, "read-only", false, "mount the root filesystem read-only (a tmpfs /tmp)")
	fl.BoolVar(&f.noUserNS, "no-userns", false, "run without a user namespace: root inside is the guest's root")
	fl.BoolVarP(&f.detach, "detach", "d", false, "print the id at once, without waiting for the sandbox to be ready")
	_ = cmd.RegisterFlagCompletionFunc("network", cobra.FixedCompletions([]string{"none", "bridge"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// request makes the create request of the flags and the command args.
func (f *createFlags) request(args []string) (api.CreateSandboxRequest, error) {
	var req api.CreateSandboxRequest
	if f.id != "" {
		req.Id = &f.id
	}
	if f.image != "" {
		req.Image = &f.image
	}
	if len(args) > 0 {
		req.Cmd = &args
	}
	var err error
	if req.Labels, err = keyValues("--label", f.labels); err != nil {
		return req, err
	}
	if req.Env, err = keyValues("--env", f.env); err != nil {
		return req, err
	}
	var mounts []api.Mount
	for _, m := range f.mounts {
		mount, err := parseMount(m)
		if err != nil {
			return req, err
		}
		mounts = append(mounts, mount)
	}
	if len(mounts) > 0 {
		req.Mounts = &mounts
	}
	if f.ttl != 0 {
		if f.ttl < time.Second || f.ttl%time.Second != 0 {
			return req, usagef("--ttl %s: want whole seconds", f.ttl)
		}
		req.TtlSeconds = ptr(int64(f.ttl / time.Second))
	}
	if f.memoryMiB != 0 || f.cpus != 0 || f.pids != 0 {
		req.Limits = &api.Limits{}
		if f.memoryMiB != 0 {
			req.Limits.MemoryMib = &f.memoryMiB
		}
		if f.cpus != 0 {
			req.Limits.Vcpus = &f.cpus
		}
		if f.pids != 0 {
			req.Limits.Pids = &f.pids
		}
	}
	if f.network != "" {
		mode := api.NetworkSpecMode(f.network)
		if !mode.Valid() {
			return req, usagef("--network %q: want none or bridge", f.network)
		}
		req.Network = &api.NetworkSpec{Mode: &mode}
	}
	if f.workdir != "" {
		req.WorkingDir = &f.workdir
	}
	if f.user != "" {
		req.User = &f.user
	}
	if f.readOnly || f.noUserNS {
		req.Security = &api.SecuritySpec{}
		if f.readOnly {
			req.Security.ReadOnlyRootfs = ptr(true)
		}
		if f.noUserNS {
			req.Security.UserNamespace = ptr(false)
		}
	}
	return req, nil
}

// keyValues parses repeated KEY=VALUE flags; nil for none.
func keyValues(flag string, kvs []string) (*map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("%s %q: want KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return &m, nil
}

// labelFilter checks repeated --label KEY=VALUE filters of a list and
// gives them as the list's label parameter; nil for none.
func labelFilter(filters []string) (*[]string, error) {
	if len(filters) == 0 {
		return nil, nil
	}
	if _, err := keyValues("--label", filters); err != nil {
		return nil, err
	}
	return &filters, nil
}

// parseMount parses SOURCE:TARGET[:ro|:rw].
func parseMount(s string) (api.Mount, error) {
	parts := strings.Split(s, ":")
	m := api.Mount{}
	switch {
	case len(parts) == 3 && (parts[2] == "ro" || parts[2] == "rw"):
		m.Readonly = ptr(parts[2] == "ro")
	case len(parts) != 2:
		return m, usagef("--mount %q: want SOURCE:TARGET or SOURCE:TARGET:ro", s)
	}
	m.Source, m.Target = parts[0], parts[1]
	if m.Source == "" || m.Target == "" {
		return m, usagef("--mount %q: want SOURCE:TARGET or SOURCE:TARGET:ro", s)
	}
	return m, nil
}

func (c *cli) printCreated(resp *api.CreateSandboxReply) error {
	if c.json() {
		return writeJSON(c.stdout, resp.Body)
	}
	created, err := decodeAnswer[api.CreateSandboxResponse](resp.Body)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.stdout, created.Id)
	return err
}

// sandboxEvent is what the create's wait reads: an event, or a note that
// the subscription dropped (and events may have been missed).
type sandboxEvent struct {
	ev      api.Event
	dropped bool
	err     error
}

// createAndWait creates the sandbox and follows its events until it is
// ready or failed, showing its image's pull. The subscription is in
// place before the create, so no event is missed; should it drop, the
// sandbox's state is read instead.
func (c *cli) createAndWait(ctx context.Context, cl *client.Client, req api.CreateSandboxRequest) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan sandboxEvent, 64)
	connected := make(chan struct{}, 1)
	go func() {
		for ev, err := range cl.Events(ctx, client.EventsOptions{
			OnConnect:   func() { nonBlocking(connected) },
			OnReconnect: func(error) { send(ctx, events, sandboxEvent{dropped: true}) },
		}) {
			if !send(ctx, events, sandboxEvent{ev: ev, err: err}) || err != nil {
				return
			}
		}
	}()
	select {
	case <-connected:
	case e := <-events:
		return e.err
	}
	resp, err := check(cl.API().CreateSandboxWithResponse(ctx, req))
	if err != nil {
		return err
	}
	created, err := decodeAnswer[api.CreateSandboxResponse](resp.Body)
	if err != nil {
		return err
	}
	prog := newProgress(c.stderr, !c.json() && c.terminal(c.stderr), "starting "+created.Id)
	err = waitReady(ctx, cl, created.Id, created.State, events, prog)
	prog.stop()
	if err != nil {
		return err
	}
	return c.printCreated(resp)
}

// waitReady reads events until sandbox id is ready or failed.
func waitReady(ctx context.Context, cl *client.Client, id string, state api.SandboxState, events <-chan sandboxEvent, prog progress) error {
	if done, err := settled(id, state, ""); done {
		return err
	}
	for {
		var e sandboxEvent
		select {
		case e = <-events:
		case <-ctx.Done():
			return ctx.Err()
		}
		switch {
		case e.err != nil:
			return e.err
		case e.dropped:
			resp, err := check(cl.API().GetSandboxWithResponse(ctx, id))
			if err != nil {
				return err
			}
			info, err := decodeAnswer[api.SandboxInfo](resp.Body)
			if err != nil {
				return err
			}
			if done, err := settled(id, info.State, deref(info.Error)); done {
				return err
			}
			continue
		case e.ev.SandboxId != id:
			continue
		}
		a := deref(e.ev.Attributes)
		if e.ev.Action == "image.pull" {
			done, _ := strconv.ParseInt(a["done"], 10, 64)
			total, _ := strconv.ParseInt(a["total"], 10, 64)
			prog.layer(a["image"], a["layer"], done, total)
			continue
		}
		if done, err := settled(id, api.SandboxState(e.ev.Action), a["error"]); done {
			return err
		}
	}
}

// settled says whether a sandbox in state has finished starting, and how.
func settled(id string, state api.SandboxState, why string) (bool, error) {
	switch state {
	case api.SandboxStateReady, api.SandboxStateRunning, "idle":
		return true, nil
	case api.SandboxStateFailed:
		return true, fmt.Errorf("sandbox %s failed: %s", id, why)
	case api.SandboxStateStopping, api.SandboxStateStopped, "removed":
		return true, fmt.Errorf("sandbox %s was %s before it was ready", id, state)
	}
	return false, nil
}

func send[T any](ctx context.Context, ch chan<- T, v T) bool {
	select {
	case ch <- v:
		return true
	case <-ctx.Done():
		return false
	}
}

func nonBlocking(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *cli) sandboxLsCmd() *cobra.Command {
	var state string
	var labelFilters []string
	var quiet bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List sandboxes, oldest first, filtered by state and labels",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			params := &api.ListSandboxesParams{}
			if state != "" {
				params.State = ptr(api.SandboxState(state))
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
			resp, err := check(cl.API().ListSandboxesWithResponse(cmd.Context(), params))
			if err != nil {
				return err
			}
			return showList(c, resp.Body, quiet, func(l api.SandboxList) []string {
				ids := make([]string, len(l.Sandboxes))
				for i, s := range l.Sandboxes {
					ids[i] = s.Id
				}
				return ids
			}, func(l api.SandboxList) error { return c.printSandboxes(l.Sandboxes) })
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only sandboxes in this state: starting, ready, running, stopping, stopped or failed")
	cmd.Flags().StringArrayVarP(&labelFilters, "label", "l", nil, "only sandboxes with this label, `KEY=VALUE` (repeatable; all must match)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print the ids only")
	_ = cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions(
		[]string{"starting", "ready", "running", "stopping", "stopped", "failed"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func (c *cli) printSandboxes(list []api.SandboxSummary) error {
	now := c.now()
	t := newTable(c.stdout, "ID", "STATE", "IP", "CREATED", "LABELS")
	for _, s := range list {
		t.row(s.Id, string(s.State), orDash(deref(s.IpAddress)), ago(now, s.CreatedAt), orDash(labels(s.Labels)))
	}
	return t.flush()
}

func (c *cli) sandboxInspectCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "inspect SANDBOX",
		Short:             "Show a sandbox: state, times, network, limits, image config, confinement",
		Args:              exactArgs(1, "a SANDBOX"),
		ValidArgsFunction: c.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().GetSandboxWithResponse(cmd.Context(), args[0]))
			if err != nil {
				return err
			}
			return show(c, resp.Body, c.printSandbox)
		},
	}
}

func (c *cli) printSandbox(s *api.SandboxInfo) error {
	now := c.now()
	t := newTable(c.stdout)
	t.row("ID:", s.Id)
	t.row("State:", string(s.State))
	if s.Error != nil {
		t.row("Error:", oneLine(*s.Error))
	}
	t.row("Created:", stamp(now, s.CreatedAt))
	t.row("Ready:", orDash(stamp(now, deref(s.ReadyAt))))
	if s.LastExitCode != nil {
		t.row("Last exit:", fmt.Sprintf("%d, %s", *s.LastExitCode, stamp(now, deref(s.LastExitedAt))))
	}
	t.row("Labels:", orDash(labels(s.Labels)))
	if n := s.Network; n != nil {
		t.row("Network:", orDash(deref(n.Mode)))
		if n.IpAddress != nil {
			t.row("Address:", fmt.Sprintf("%s via %s", *n.IpAddress, orDash(deref(n.Gateway))))
		}
	}
	if l := s.Limits; l != nil {
		t.row("Limits:", fmt.Sprintf("%d MiB, %d CPUs, %d pids", deref(l.MemoryMib), deref(l.Vcpus), deref(l.Pids)))
	}
	if ic := s.ImageConfig; ic != nil {
		t.row("Entrypoint:", orDash(strings.Join(ic.Entrypoint, " ")))
		t.row("Cmd:", orDash(strings.Join(ic.Cmd, " ")))
		t.row("Working dir:", orDash(ic.WorkingDir))
		t.row("User:", orDash(ic.User))
		t.row("Image env:", orDash(labels(&ic.Env)))
	}
	if sec := s.Security; sec != nil {
		userns := "none: root is the guest's root"
		if sec.UserNamespace {
			userns = "own"
			if m := sec.IdMap; m != nil {
				userns = fmt.Sprintf("own, ids 0-%d are %d-%d on the guest", m.Size-1, m.HostId, uint64(m.HostId)+uint64(m.Size)-1)
			}
		}
		t.row("User namespace:", userns)
		t.row("Capabilities:", orDash(strings.Join(sec.Capabilities, " ")))
		t.row("Seccomp:", yesNo(sec.Seccomp))
		t.row("No new privileges:", yesNo(sec.NoNewPrivileges))
		t.row("Read-only root:", yesNo(sec.ReadOnlyRootfs))
	}
	return t.flush()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (c *cli) sandboxStopCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:               "stop SANDBOX",
		Short:             "Stop a sandbox: SIGTERM to its workload, SIGKILL after --timeout",
		Args:              exactArgs(1, "a SANDBOX"),
		ValidArgsFunction: c.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.StopSandboxRequest{}
			if timeout != 0 {
				if timeout < time.Second || timeout%time.Second != 0 {
					return usagef("--timeout %s: want whole seconds", timeout)
				}
				req.TimeoutSeconds = ptr(int64(timeout / time.Second))
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().StopSandboxWithResponse(cmd.Context(), args[0], req))
			if err != nil {
				return err
			}
			if c.json() {
				return writeJSON(c.stdout, resp.Body)
			}
			_, err = fmt.Fprintln(c.stdout, args[0])
			return err
		},
	}
	cmd.Flags().DurationVarP(&timeout, "timeout", "t", 0, "how long the workload has after SIGTERM, in whole seconds (0: the agent's 30 s)")
	return cmd
}

func (c *cli) sandboxRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "rm SANDBOX...",
		Aliases:           []string{"remove"},
		Short:             "Remove sandboxes and everything they left on the machine",
		Args:              minArgs(1, "one SANDBOX or more"),
		ValidArgsFunction: c.completeSandboxes(-1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			return c.each(args, func(id string) error {
				_, err := check(cl.API().RemoveSandboxWithResponse(cmd.Context(), id, &api.RemoveSandboxParams{Force: &force}))
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "also remove a sandbox whose workload runs")
	return cmd
}

// each does do for every id, printing the ids it did (table output) and
// a line for each failure; any failure makes the exit status 1.
func (c *cli) each(ids []string, do func(id string) error) error {
	failed := false
	for _, id := range ids {
		if err := do(id); err != nil {
			if len(ids) == 1 {
				return err
			}
			fmt.Fprintf(c.stderr, "arcboxctl: %s: %s\n", id, message(err, c.addr()))
			failed = true
			continue
		}
		if !c.json() {
			fmt.Fprintln(c.stdout, id)
		}
	}
	if failed {
		return exitCode(exitFailure)
	}
	return nil
}

// completeSandboxes completes the nth argument (every one from the
// first, when n is -1) with the agent's sandbox ids.
func (c *cli) completeSandboxes(n int) cobra.CompletionFunc {
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
		resp, err := check(cl.API().ListSandboxesWithResponse(ctx, &api.ListSandboxesParams{}))
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		list, err := decodeAnswer[api.SandboxList](resp.Body)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var ids []cobra.Completion
		for _, s := range list.Sandboxes {
			ids = append(ids, cobra.CompletionWithDesc(s.Id, string(s.State)))
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}
