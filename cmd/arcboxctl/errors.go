package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/arcbox/arcbox-agent/client"
)

// Exit statuses of arcboxctl's own (run and exec exit with the command's).
const (
	exitFailure = 1 // the agent refused, or could not be reached
	exitUsage   = 2 // a wrong flag, argument or address
)

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode ends arcboxctl with a command's exit code, saying nothing: the
// command said what it had to on its own streams.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exitStatus maps err to arcboxctl's exit status and the line it prints
// (empty for none).
func (c *cli) exitStatus(err error) (int, string) {
	var code exitCode
	if errors.As(err, &code) {
		return int(code), ""
	}
	var ue usageError
	if errors.As(err, &ue) || !c.started {
		return exitUsage, err.Error()
	}
	return exitFailure, message(err, c.addr())
}

// message is the one line an error becomes: the agent's own message for
// a refusal, and what could not be reached for a connection that failed,
// without the request's plumbing (a Go URL error's method and URL).
func message(err error, addr string) string {
	var ae *client.Error
	if errors.As(err, &ae) {
		// The status says what the message is about: the agent's 404 is
		// `sandbox "x"`.
		return fmt.Sprintf("%s (%d %s)", oneLine(ae.Message), ae.Code, http.StatusText(ae.Code))
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return fmt.Sprintf("cannot reach the agent at %s: %v", addr, innermost(oe))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out waiting for the agent at " + addr
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Sprintf("the agent at %s: %v", addr, ue.Err)
	}
	return oneLine(err.Error())
}

// innermost is a dial error's cause without the addresses net.OpError
// repeats ("connect: connection refused").
func innermost(oe *net.OpError) error {
	if oe.Err == nil {
		return oe
	}
	return oe.Err
}

// oneLine folds a message onto one line: a daemon's log tail, say.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
