package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

// procFlags are what run and exec share: the command's environment,
// directory, user and time limit.
type procFlags struct {
	env           []string
	workdir, user string
	timeout       time.Duration

	// What parse made of them, for the request.
	envMap          *map[string]string
	timeoutSeconds  *int64
	workdirP, userP *string
}

func (p *procFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringArrayVarP(&p.env, "env", "e", nil, "set an environment variable, `NAME=VALUE` (repeatable)")
	fl.StringVarP(&p.workdir, "workdir", "w", "", "the working directory (absolute; default: the sandbox's)")
	fl.StringVarP(&p.user, "user", "u", "", "the user: uid[:gid] or name[:group] (default: the sandbox's)")
	fl.DurationVar(&p.timeout, "timeout", 0, "kill the command (SIGKILL, exit 137) after this long, in whole seconds (0: no limit)")
	// Everything after the sandbox is the command's, flags too:
	// `arcboxctl run box ls -l` works without --.
	fl.SetInterspersed(false)
}

// command is the command of args (SANDBOX [--] CMD...): flags stop at
// the sandbox, so a -- after it is still in args.
func command(args []string) []string {
	if len(args) > 1 && args[1] == "--" {
		return args[2:]
	}
	return args[1:]
}

// parse checks the flags and fills the request fields.
func (p *procFlags) parse() error {
	var err error
	if p.envMap, err = keyValues("--env", p.env); err != nil {
		return err
	}
	if p.timeout != 0 {
		if p.timeout < time.Second || p.timeout%time.Second != 0 {
			return usagef("--timeout %s: want whole seconds", p.timeout)
		}
		p.timeoutSeconds = ptr(int64(p.timeout / time.Second))
	}
	if p.workdir != "" {
		p.workdirP = &p.workdir
	}
	if p.user != "" {
		p.userP = &p.user
	}
	return nil
}

const runLong = `Run a command in a sandbox and wait for it. Its stdout and stderr go to
arcboxctl's own, as they come, and its exit code is arcboxctl's (128+N when
signal N ended it; 127 when it could not be started, with the reason on
stderr). Without a command, the sandbox's image's entrypoint and cmd run.
Stdin is not passed (see exec). Ctrl-C ends arcboxctl, and the agent hangs
the command up (SIGHUP, then SIGKILL). With -o json, the run's output
messages are printed as the agent sends them, one per line.`

func (c *cli) runCmd() *cobra.Command {
	var p procFlags
	cmd := &cobra.Command{
		Use:               "run [flags] SANDBOX [--] [CMD [ARG...]]",
		Short:             "Run a command in a sandbox: its output to the terminal, its exit code as arcboxctl's",
		Long:              runLong,
		Example:           `  arcboxctl run demo -- sh -c 'echo out; echo err >&2; exit 3'; echo $?`,
		Args:              minArgs(1, "a SANDBOX and the command to run"),
		ValidArgsFunction: c.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := p.parse(); err != nil {
				return err
			}
			var raw io.Writer
			opts := []client.Option{}
			if c.json() {
				raw = c.stdout
				opts = append(opts, client.WithObserver(func(schema string, msg []byte) {
					if schema == "OutputMessage" {
						fmt.Fprintf(raw, "%s\n", bytes.TrimSpace(msg))
					}
				}))
			}
			cl, err := c.client(opts...)
			if err != nil {
				return err
			}
			req := api.RunRequest{
				Cmd: command(args), Env: p.envMap, TimeoutSeconds: p.timeoutSeconds,
				WorkingDir: p.workdirP, User: p.userP,
			}
			for o, err := range cl.Run(cmd.Context(), args[0], req) {
				if err != nil {
					return err
				}
				if o.Exit != nil {
					return c.exited(o.Exit)
				}
				if raw != nil {
					continue
				}
				w := c.stdout
				if o.Stream == "stderr" {
					w = c.stderr
				}
				if _, err := w.Write(o.Data); err != nil {
					return err
				}
			}
			return errors.New("the run's output ended without an exit")
		},
	}
	p.add(cmd)
	return cmd
}

// exited ends arcboxctl as the command ended: its code, and a line about
// output the agent had to cut.
func (c *cli) exited(x *client.Exit) error {
	if x.Message != "" && !c.json() {
		fmt.Fprintln(c.stderr, "arcboxctl: "+oneLine(x.Message))
	}
	if x.Code == 0 {
		return nil
	}
	if x.Code < 0 {
		return fmt.Errorf("the command did not run to its end (exit code %d)", x.Code)
	}
	return exitCode(x.Code)
}
