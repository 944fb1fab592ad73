package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/api"
)

func (c *cli) pingCmd() *cobra.Command {
	var sync bool
	var msg string
	cmd := &cobra.Command{
		Use:   "ping",
		Short: "Check the agent answers; with --sync, send this machine's time and show the guest clock's drift",
		Long: `Check the agent answers, and how fast.

With --sync, send this machine's time (POST /v1/ping): the agent answers
the guest clock's drift from it, and steps the guest clock to it when the
agent runs with --set-clock.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			began := time.Now()
			var body []byte
			if sync || msg != "" {
				req := api.PingRequest{}
				if msg != "" {
					req.Message = &msg
				}
				if sync {
					req.TimestampNanos = ptr(c.now().UnixNano())
				}
				resp, err := check(cl.API().PostPingWithResponse(cmd.Context(), req))
				if err != nil {
					return err
				}
				body = resp.Body
			} else {
				resp, err := check(cl.API().GetPingWithResponse(cmd.Context()))
				if err != nil {
					return err
				}
				body = resp.Body
			}
			r, err := decodeAnswer[api.PingResponse](body)
			if err != nil {
				return err
			}
			took := time.Since(began)
			if c.json() {
				return writeJSON(c.stdout, body)
			}
			fmt.Fprintf(c.stdout, "%s from agent %s in %s\n", r.Message, r.Version, took.Round(10*time.Microsecond))
			if sync {
				fmt.Fprintln(c.stdout, drift(r))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&sync, "sync", false, "send this machine's time; show the guest clock's drift (and step it, if the agent may)")
	cmd.Flags().StringVarP(&msg, "message", "m", "", "a message for the agent to echo back")
	return cmd
}

// drift says how far the guest clock was from this machine's, and what
// the agent did about it.
func drift(r *api.PingResponse) string {
	if r.ClockDriftMs == nil {
		return "clock drift: not reported"
	}
	ms := *r.ClockDriftMs
	s := fmt.Sprintf("clock drift: %+d ms", ms)
	switch {
	case ms > 0:
		s += " (the guest is ahead)"
	case ms < 0:
		s += " (the guest is behind)"
	}
	switch {
	case deref(r.ClockStepped):
		s += "; the guest clock was stepped to this machine's"
	case r.ClockError != nil:
		s += "; the guest clock was not stepped: " + *r.ClockError
	default:
		s += "; the guest clock was left alone"
	}
	return s
}

func (c *cli) infoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show the guest's system facts: OS, kernel, CPUs, memory, addresses, shares",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := c.client()
			if err != nil {
				return err
			}
			resp, err := check(cl.API().GetInfoWithResponse(cmd.Context()))
			if err != nil {
				return err
			}
			return show(c, resp.Body, c.printInfo)
		},
	}
}

func (c *cli) printInfo(in *api.SystemInfo) error {
	t := newTable(c.stdout)
	t.row("Hostname:", in.Hostname)
	t.row("OS:", strings.TrimSpace(in.OsName+" "+in.OsVersion))
	t.row("Kernel:", in.KernelVersion)
	t.row("Arch:", in.Arch)
	t.row("CPUs:", strconv.Itoa(int(in.CpuCount)))
	t.row("Memory:", fmt.Sprintf("%s available of %s", bytesIEC(in.AvailableMemory), bytesIEC(in.TotalMemory)))
	t.row("Uptime:", (time.Duration(in.Uptime) * time.Second).String())
	var load []string
	for _, l := range in.LoadAverage {
		load = append(load, strconv.FormatFloat(l, 'f', 2, 64))
	}
	t.row("Load:", strings.Join(load, " "))
	t.row("Addresses:", orDash(strings.Join(in.IpAddresses, ", ")))
	for i, s := range deref(in.Shares) {
		key := ""
		if i == 0 {
			key = "Shares:"
		}
		dax := ""
		if s.Dax {
			dax = " (DAX)"
		}
		t.row(key, fmt.Sprintf("%s on %s%s", s.Tag, s.Path, dax))
	}
	for i, e := range deref(in.Errors) {
		key := ""
		if i == 0 {
			key = "Unread:"
		}
		t.row(key, e)
	}
	return t.flush()
}

// noArgs refuses arguments, as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// groupArgs refuses what is not one of a command group's subcommands
// (cobra runs a group's Args only when it is runnable: see groupHelp).
func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}

// groupHelp makes a command group runnable, so that an unknown subcommand
// is a usage error (exit 2) rather than help and status 0; the group
// alone prints its help.
func groupHelp(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// exactArgs wants n arguments, named by what.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s wants %s, got %d arguments", cmd.CommandPath(), what, len(args))
		}
		return nil
	}
}

// minArgs wants n arguments or more, named by what.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usagef("%s wants %s", cmd.CommandPath(), what)
		}
		return nil
	}
}
