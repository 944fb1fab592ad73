// Command arcboxctl is the host engineer's command line for the arcbox
// agent: it pings the agent, brings up its runtime, makes, lists and
// removes sandboxes, runs commands in them (interactively too), follows
// the event journal, and checkpoints and restores sandboxes, all over the
// Go SDK in client/. Tables are for people; -o json prints the API's own
// JSON for scripts.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"time"

	"golang.org/x/term"
)

// version is stamped by the build (make build: -X main.version=...).
var version = "dev"

// main leaves the signals to their defaults, but in an interactive exec,
// which takes the ones it must pass on or clean up after: Ctrl-C during
// a run or a followed stream ends arcboxctl as it ends any program, and
// the agent hangs up what the closed connection was running.
func main() {
	os.Exit(run(context.Background(), os.Args[1:], osApp()))
}

// app is what a command reaches outside itself: the standard streams,
// the environment, the working directory and the clock, so that the unit
// tests run the whole command line in-process against a fake agent.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	cwd            string
	now            func() time.Time
	// terminal says whether a stream (os.Stdin, os.Stdout, os.Stderr) is
	// a terminal; only then does arcboxctl draw live progress or go raw.
	terminal func(f any) bool
	// signals delivers the signals an interactive exec handles (window
	// changes, interrupts, hang-ups); stop undoes it.
	signals func(c chan<- os.Signal, sig ...os.Signal) (stop func())
}

// osApp is the app of the real process.
func osApp() *app {
	cwd, _ := os.Getwd()
	return &app{
		stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr,
		getenv: os.Getenv,
		cwd:    cwd,
		now:    time.Now,
		terminal: func(f any) bool {
			fd, ok := f.(interface{ Fd() uintptr })
			return ok && term.IsTerminal(int(fd.Fd()))
		},
		signals: func(c chan<- os.Signal, sig ...os.Signal) func() {
			signal.Notify(c, sig...)
			return func() { signal.Stop(c) }
		},
	}
}
