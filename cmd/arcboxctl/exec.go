package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/client"
)

const execLong = `Run a command in a sandbox with its stdin attached: -i passes arcboxctl's
stdin to it, -t gives it a terminal (stdin must be one).

With -t the local terminal goes raw, so every key reaches the sandbox:
Ctrl-C interrupts the command there, not arcboxctl, and the window's size
is sent at the start and each time it changes. The terminal is restored
however arcboxctl ends. Without -t, Ctrl-C sends the command SIGINT. A
SIGTERM or SIGHUP to arcboxctl hangs the command up and ends arcboxctl
with 128+N. The exit status is the command's.`

// execFlags are exec's options beyond run's.
type execFlags struct {
	procFlags
	interactive, tty bool
}

func (c *cli) execCmd() *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:               "exec [-i] [-t] [flags] SANDBOX [--] [CMD [ARG...]]",
		Short:             "Run a command in a sandbox with stdin attached; -it for an interactive shell",
		Long:              execLong,
		Example:           "  arcboxctl exec -it demo -- sh",
		Args:              minArgs(1, "a SANDBOX and the command to run"),
		ValidArgsFunction: c.completeSandboxes(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.parse(); err != nil {
				return err
			}
			return c.exec(cmd.Context(), args[0], command(args), f)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVarP(&f.interactive, "interactive", "i", false, "pass stdin to the command")
	cmd.Flags().BoolVarP(&f.tty, "tty", "t", false, "give the command a terminal (raw mode here; stdin must be a terminal)")
	return cmd
}

// fdOf is the descriptor of a stream that is a file, or -1.
func fdOf(v any) int {
	if f, ok := v.(interface{ Fd() uintptr }); ok {
		return int(f.Fd())
	}
	return -1
}

func (c *cli) exec(ctx context.Context, id string, argv []string, f execFlags) error {
	init := api.ExecInit{Cmd: argv, Env: f.envMap, TimeoutSeconds: f.timeoutSeconds, WorkingDir: f.workdirP, User: f.userP}
	inFd := fdOf(c.stdin)
	if f.tty && !c.terminal(c.stdin) {
		return usagef("-t wants stdin to be a terminal; leave -t out to pipe input (-i)")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Signals are caught from before the size is read, so no change is
	// missed; until the session is up, one that would end arcboxctl
	// ends the connecting.
	r := &relay{c: c, tty: f.tty, cancel: cancel}
	sigs := make(chan os.Signal, 8)
	stopSignals := c.signals(sigs, syscall.SIGWINCH, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	defer stopSignals()
	go r.run(ctx, sigs)

	if f.tty {
		init.Tty = ptr(true)
		if w, h, ok := c.windowSize(); ok {
			init.TtySize = &api.TTYSize{Width: int32(w), Height: int32(h)}
		}
		if t := c.getenv("TERM"); t != "" {
			env := map[string]string{}
			for k, v := range deref(f.envMap) {
				env[k] = v
			}
			if _, set := env["TERM"]; !set {
				env["TERM"] = t
			}
			init.Env = &env
		}
	}
	s, err := cl.Exec(ctx, id, init)
	if err != nil {
		if sig := r.ended(); sig != 0 {
			return exitCode(128 + int(sig))
		}
		return err
	}
	defer s.Close()

	if f.tty {
		old, err := term.MakeRaw(inFd)
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		// Every way out of here passes this, a panic too.
		defer func() { _ = term.Restore(inFd, old) }()
	}
	r.attach(s)
	if f.interactive || f.tty {
		go c.pumpStdin(s)
	} else if err := s.CloseStdin(); err != nil {
		return err
	}

	for o, err := range s.Output() {
		if err != nil {
			if sig := r.ended(); sig != 0 {
				return exitCode(128 + int(sig))
			}
			return err
		}
		if o.Exit != nil {
			return c.exited(o.Exit)
		}
		w := c.stdout
		if o.Stream == "stderr" {
			w = c.stderr
		}
		if _, err := w.Write(o.Data); err != nil {
			return err
		}
	}
	return errors.New("the exec's output ended without an exit")
}

// windowSize is the terminal's size, from stdout or else stdin.
func (c *cli) windowSize() (w, h int, ok bool) {
	for _, s := range []any{c.stdout, c.stdin} {
		if fd := fdOf(s); fd >= 0 {
			if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
				return w, h, true
			}
		}
	}
	return 0, 0, false
}

// pumpStdin sends stdin to the command, and its end.
func (c *cli) pumpStdin(s *client.ExecSession) {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.stdin.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			_ = s.CloseStdin()
			return
		}
		if err != nil {
			return
		}
	}
}

// relay passes the signals arcboxctl receives on to the session: window
// changes as resizes (with a terminal), SIGINT and SIGQUIT as themselves
// (a raw terminal sends Ctrl-C as a byte instead, which the sandbox's
// terminal turns into SIGINT), and SIGTERM or SIGHUP as a hang-up: the
// session is closed (the agent hangs the command up) and arcboxctl ends
// with 128+N. Before the session is up, any of the last four ends the
// connecting.
type relay struct {
	c      *cli
	tty    bool
	cancel context.CancelFunc

	mu  sync.Mutex
	s   *client.ExecSession
	sig syscall.Signal // the signal that ended arcboxctl's wait
}

func (r *relay) attach(s *client.ExecSession) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.s = s
}

// ended is the signal that ended the session, or 0.
func (r *relay) ended() syscall.Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sig
}

func (r *relay) run(ctx context.Context, ch <-chan os.Signal) {
	for {
		var sig os.Signal
		select {
		case <-ctx.Done():
			return
		case sig = <-ch:
		}
		r.mu.Lock()
		s := r.s
		r.mu.Unlock()
		switch {
		case sig == syscall.SIGWINCH:
			if w, h, ok := r.c.windowSize(); ok && r.tty && s != nil {
				_ = s.Resize(w, h)
			}
		case s != nil && sig == syscall.SIGINT:
			_ = s.Signal("SIGINT")
		case s != nil && sig == syscall.SIGQUIT:
			_ = s.Signal("SIGQUIT")
		default:
			r.mu.Lock()
			r.sig = sig.(syscall.Signal)
			r.mu.Unlock()
			if s != nil {
				_ = s.Close()
			}
			r.cancel()
			return
		}
	}
}
