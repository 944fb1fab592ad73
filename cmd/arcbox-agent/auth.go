package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/arcbox/arcbox-agent/httpapi"
)

// listenerAuth checks, before anything is bound, that every listener can
// tell its callers apart, and returns the bearer token ("" when there is
// no token file). A TCP listener, the control API's or the Docker
// proxy's, needs a token unless it is on a loopback address and
// --insecure-loopback says to serve it without one (the proxy checks the
// token in each connection's first request). insecure is told of each
// listener served without authentication.
func listenerAuth(cfg *config, insecure func(listener string)) (string, error) {
	var token string
	if cfg.AuthTokenFile != "" {
		var err error
		if token, err = httpapi.ReadTokenFile(cfg.AuthTokenFile); err != nil {
			return "", fmt.Errorf("--auth-token-file: %w", err)
		}
	}
	check := func(kind, u string) error {
		ep, err := httpapi.ParseEndpoint(u)
		if err != nil {
			return err
		}
		if ep.Scheme != "tcp" || token != "" {
			return nil
		}
		if !isLoopback(ep) {
			return fmt.Errorf("%s %s is TCP beyond loopback and there is no bearer token: give --auth-token-file FILE, "+
				"or listen on a loopback address (127.0.0.1, [::1]) with --insecure-loopback", kind, u)
		}
		if !cfg.InsecureLoopback {
			return fmt.Errorf("%s %s is TCP and there is no bearer token: give --auth-token-file FILE, "+
				"or --insecure-loopback to let any local user reach it unauthenticated", kind, u)
		}
		insecure(u)
		return nil
	}
	for _, u := range cfg.Listen {
		if err := check("listener", u); err != nil {
			return "", err
		}
	}
	if err := check("docker listener", cfg.DockerListen); err != nil {
		return "", err
	}
	return token, nil
}

// isLoopback reports whether a TCP endpoint's host is a loopback IP
// address. A host name is not, whatever it resolves to now.
func isLoopback(ep httpapi.Endpoint) bool {
	host, _, err := net.SplitHostPort(ep.Address)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}

// openAuditLog returns the audit logger: JSON lines appended to
// cfg.AuditLog (made 0600), or the main log; and what closes its file.
func openAuditLog(cfg *config, logger *slog.Logger) (*slog.Logger, func(), error) {
	if cfg.AuditLog == "" {
		return logger.With("component", "audit"), func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(cfg.AuditLog), 0o750); err != nil {
		return nil, nil, fmt.Errorf("--audit-log: %w", err)
	}
	f, err := os.OpenFile(cfg.AuditLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("--audit-log: %w", err)
	}
	// A file that was there before keeps its mode: make it 0600 too.
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return nil, nil, fmt.Errorf("--audit-log: %w", err)
	}
	audit := slog.New(slog.NewJSONHandler(f, nil)).With("component", "audit")
	return audit, func() { _ = f.Close() }, nil
}

// forbiddenPaths are the host paths no sandbox may mount, whatever the
// mount roots: the agent's own sockets, token and logs, the runtime's
// sockets, binaries and state, and the data volume's internals.
func forbiddenPaths(cfg *config) []string {
	var out []string
	for _, u := range append([]string{cfg.DockerListen}, cfg.Listen...) {
		if ep, err := httpapi.ParseEndpoint(u); err == nil && ep.Scheme == "unix" {
			out = append(out, ep.Address)
		}
	}
	for _, p := range []string{
		cfg.DockerSocket, cfg.ContainerdSocket, cfg.DataMount, cfg.DockerDataRoot, cfg.ContainerdRoot,
		cfg.ContainerdState, cfg.ContainerdConfig, cfg.DockerExecRoot, cfg.DiskStateDir, logDir(cfg),
		cfg.RuntimeBinDir, cfg.AuthTokenFile, cfg.AuditLog, cfg.RegistryAuthFile, cfg.EventJournalDir,
	} {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		out = append(out, p)
	}
	return out
}
