package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/agentaddr"
)

// Exit statuses of `arcbox-agent probe`, for health checks and scripts.
const (
	probeOK          = 0 // the agent answered 2xx
	probeAnswerError = 1 // the agent answered, with another status
	probeUnreachable = 2 // no answer: bad usage, nothing to connect to, or the connection failed
)

// probeError is a failed probe and the exit status it means.
type probeError struct {
	status int
	err    error
}

func (e *probeError) Error() string { return e.err.Error() }
func (e *probeError) Unwrap() error { return e.err }

// probeExitStatus is the exit status err means: probeUnreachable unless
// the agent answered.
func probeExitStatus(err error) int {
	var pe *probeError
	switch {
	case err == nil:
		return probeOK
	case errors.As(err, &pe):
		return pe.status
	}
	return probeUnreachable
}

// runProbe is `arcbox-agent probe URL PATH`, the agent's health probe: one
// request to an agent over a listener URL (vsock://CID:PORT,
// unix:///path, tcp://HOST:PORT), printing the status and body. It
// retries connecting until --timeout, so it can run while the agent
// starts: how a VM's own processes check the agent (a service manager's
// health check: GET /readyz), and how the VM test reaches the control API
// over vsock from inside the guest. Its exit status is probeOK,
// probeAnswerError or probeUnreachable (see probeExitStatus); for work in
// sandboxes, use arcboxctl.
func runProbe(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 30*time.Second, "how long to keep trying to connect")
	method := fs.String("X", http.MethodGet, "the request method")
	data := fs.String("d", "", "a JSON request body")
	tokenFile := fs.String("token-file", "", "a file with the bearer token a TCP listener wants (as --auth-token-file)")
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprintln(stdout, "Usage: arcbox-agent probe [-timeout 30s] [-X METHOD] [-d JSON] [-token-file FILE] URL PATH")
		fmt.Fprintln(stdout, "Exit status: 0 the agent answered 2xx, 1 it answered another status, 2 no answer (or bad usage).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errors.New("probe: want URL and PATH")
	}
	_, dial, err := agentaddr.Parse(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	var token string
	if *tokenFile != "" {
		if token, err = httpapi.ReadTokenFile(*tokenFile); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var conn net.Conn
	for conn == nil {
		c, err := dial(ctx, "", "")
		if err == nil {
			conn = c // never a typed nil from a failed dial
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect to %s: %w (gave up after %v)", fs.Arg(0), err, *timeout)
		case <-time.After(20 * time.Millisecond):
		}
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		if conn == nil {
			return nil, errors.New("the probe makes one request")
		}
		c := conn
		conn = nil
		return c, nil
	}}}
	var body io.Reader
	if *data != "" {
		body = strings.NewReader(*data)
	}
	req, err := http.NewRequestWithContext(ctx, *method, "http://agent"+fs.Arg(1), body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "probe %s %s %s: %d %s\n", *method, fs.Arg(0), fs.Arg(1), resp.StatusCode, strings.TrimSpace(string(out)))
	if resp.StatusCode/100 != 2 {
		return &probeError{status: probeAnswerError, err: fmt.Errorf("probe: status %d", resp.StatusCode)}
	}
	return nil
}
