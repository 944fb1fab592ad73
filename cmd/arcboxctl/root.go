package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/arcbox/arcbox-agent/client"
)

// defaultTCP is the TCP listener of `make run`, the default when its unix
// socket is not in the working directory.
const defaultTCP = "tcp://127.0.0.1:8080"

// runDir is where `make run` keeps its socket and token, under the
// repository it runs in.
const runDir = ".run"

// globals are the flags every command takes.
type globals struct {
	host      string
	token     string
	tokenFile string
	output    string
}

// cli is one invocation: the app it runs in and its global flags.
type cli struct {
	*app
	g globals
	// started is set once a command's own code runs: an error before it
	// (a flag, an argument, an unknown command) is a usage error.
	started bool
}

const rootLong = `arcboxctl drives an arcbox agent over its API: the agent's health, its
container runtime, sandboxes and the commands run in them, events and
snapshots.

The agent's address is --host, else $ARCBOX_HOST, else the socket of
` + "`make run`" + ` when the working directory has one (unix://$PWD/.run/agent.sock),
else ` + defaultTCP + `. Addresses are unix:///path, tcp://host:port or
vsock://CID:PORT. TCP wants the agent's bearer token: --token or
$ARCBOX_TOKEN, else the file --token-file or $ARCBOX_TOKEN_FILE names, else
.run/token in the working directory (the one ` + "`make run`" + ` makes).

Output is a table for people; -o json prints the API's JSON as the agent
sent it (one object per line for streams), for scripts.

Exit status: 0 on success; for run and exec, the command's own exit code
(128+N when signal N ended it); 1 when the agent refused or could not be
reached, with its message on stderr; 2 for a usage error (a wrong flag,
argument or address).`

// newRoot makes the command tree.
func (c *cli) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "arcboxctl",
		Short:         "Drive an arcbox agent: runtime, sandboxes, runs, events, snapshots",
		Long:          rootLong,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Flags and arguments are parsed and checked before this runs.
		PersistentPreRunE: func(*cobra.Command, []string) error {
			c.started = true
			if c.g.output != "table" && c.g.output != "json" {
				return usagef("--output %q: want table or json", c.g.output)
			}
			return nil
		},
	}
	root.SetIn(c.stdin)
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&c.g.host, "host", "", "the agent's address: unix:///path, tcp://host:port or vsock://CID:PORT (default: see arcboxctl --help)")
	pf.StringVar(&c.g.token, "token", "", "the bearer token for TCP (default $ARCBOX_TOKEN); a file is safer, see --token-file")
	pf.StringVar(&c.g.tokenFile, "token-file", "", "a file holding the bearer token for TCP (default $ARCBOX_TOKEN_FILE, else ./.run/token)")
	pf.StringVarP(&c.g.output, "output", "o", "table", "output format: table or json")
	_ = root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))

	root.AddCommand(
		c.pingCmd(), c.infoCmd(), c.runtimeCmd(), c.sandboxCmd(),
		c.runCmd(), c.execCmd(), c.eventsCmd(),
		c.checkpointCmd(), c.restoreCmd(), c.snapshotCmd(),
	)
	return root
}

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string, a *app) int {
	c := &cli{app: a}
	root := c.newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	code, msg := c.exitStatus(err)
	if msg != "" {
		fmt.Fprintln(c.stderr, "arcboxctl: "+msg)
	}
	return code
}

// addr is the agent's address (see rootLong).
func (c *cli) addr() string {
	if c.g.host != "" {
		return c.g.host
	}
	if h := c.getenv("ARCBOX_HOST"); h != "" {
		return h
	}
	sock := filepath.Join(c.cwd, runDir, "agent.sock")
	if st, err := os.Stat(sock); err == nil && st.Mode().Type() == os.ModeSocket {
		return "unix://" + sock
	}
	return defaultTCP
}

// tokenFor is the bearer token for addr: TCP's only, since the agent
// wants none on unix sockets and vsock.
func (c *cli) tokenFor(addr string) (string, error) {
	if !strings.HasPrefix(addr, "tcp://") {
		return "", nil
	}
	if c.g.token != "" {
		return c.g.token, nil
	}
	if t := c.getenv("ARCBOX_TOKEN"); t != "" {
		return t, nil
	}
	file, named := c.g.tokenFile, true
	if file == "" {
		file = c.getenv("ARCBOX_TOKEN_FILE")
	}
	if file == "" {
		file, named = filepath.Join(c.cwd, runDir, "token"), false
	}
	b, err := os.ReadFile(file)
	switch {
	case err != nil && !named && os.IsNotExist(err):
		return "", nil // no token: the agent says what it wants
	case err != nil:
		return "", fmt.Errorf("read the token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// client connects to the agent; a malformed address is a usage error.
func (c *cli) client(opts ...client.Option) (*client.Client, error) {
	addr := c.addr()
	tok, err := c.tokenFor(addr)
	if err != nil {
		return nil, err
	}
	if tok != "" {
		opts = append(opts, client.WithToken(tok))
	}
	cl, err := client.New(addr, opts...)
	if err != nil {
		return nil, usageError{err}
	}
	return cl, nil
}

// json reports whether -o json was asked for.
func (c *cli) json() bool { return c.g.output == "json" }
