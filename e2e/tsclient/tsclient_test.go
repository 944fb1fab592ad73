//go:build linux

// Package tsclient checks the contract from another ecosystem: it starts
// a live agent (real runc sandboxes, every path in a temporary directory,
// inside testenv.RunIsolated's namespaces) on a loopback TCP listener with
// a bearer token, generates a TypeScript client from the /openapi.yaml the
// agent serves with openapi-typescript and openapi-fetch, type-checks and
// compiles src/main.mts against it with tsc (strict), and runs it with
// node: the script pings, creates sandboxes, reads a run's NDJSON output
// as a stream, follows events over Server-Sent Events and resumes them
// with Last-Event-ID. The npm packages are pinned in package-lock.json and
// installed by `make deps` (npm ci); nothing generated is kept.
package tsclient

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/agenttest"
	"github.com/arcbox/arcbox-agent/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv("ARCBOX_TEST_ISOLATED") != "1" && os.Geteuid() == 0 {
		// Run again inside new mount and network namespaces.
		os.Exit(testenv.RunIsolated(m))
	}
	os.Exit(agenttest.Run(m))
}

// scriptTimeout bounds each node step: only a hang ever reaches it.
const scriptTimeout = 5 * time.Minute

func TestTypeScriptClient(t *testing.T) {
	testenv.RequireIsolated(t)
	bb := testenv.RequireBinary(t, "busybox")
	if _, err := exec.LookPath("runc"); err != nil {
		testenv.RequireBinary(t, "crun")
	}
	pkg := requireNodeModules(t)
	agenttest.Binary(t)

	work := tempDir(t)
	url, token := startAgent(t, filepath.Join(work, "agent"), bb)

	spec := fetchSpec(t, url, token)
	gen := filepath.Join(work, "gen")
	if err := os.Mkdir(gen, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, "openapi.yaml"), spec, 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(pkg, "node_modules", ".bin")
	node(t, "openapi-typescript", nil, filepath.Join(bin, "openapi-typescript"),
		filepath.Join(gen, "openapi.yaml"), "--output", filepath.Join(gen, "api.d.ts"))
	writeTSConfig(t, pkg, gen)
	node(t, "tsc", nil, filepath.Join(bin, "tsc"), "--project", filepath.Join(gen, "tsconfig.json"))
	// The compiled script imports its packages from next to it.
	if err := os.Symlink(filepath.Join(pkg, "node_modules"), filepath.Join(gen, "node_modules")); err != nil {
		t.Fatal(err)
	}
	out := node(t, "the script", []string{"AGENT_URL=" + url, "AGENT_TOKEN=" + token},
		"node", filepath.Join(gen, "out", "main.mjs"))
	t.Logf("the script's output:\n%s", out)
}

// requireNodeModules returns this package's directory once node is on
// PATH and node_modules holds the versions package.json pins; else the
// test skips (fails under CI=true) saying to run make deps.
func requireNodeModules(t *testing.T) string {
	t.Helper()
	pkg, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	missing := func(format string, args ...any) {
		t.Helper()
		testenv.SkipOrFail(t, "%s: run `make deps` (it runs npm ci in e2e/tsclient)", fmt.Sprintf(format, args...))
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing("node is not on PATH (%v)", err)
	}
	var manifest struct {
		Dependencies    map[string]string `json:"dependencies"`
		DevDependencies map[string]string `json:"devDependencies"`
	}
	if err := readJSON(filepath.Join(pkg, "package.json"), &manifest); err != nil {
		t.Fatal(err)
	}
	for _, deps := range []map[string]string{manifest.Dependencies, manifest.DevDependencies} {
		for name, want := range deps {
			var installed struct{ Version string }
			if err := readJSON(filepath.Join(pkg, "node_modules", name, "package.json"), &installed); err != nil {
				missing("npm package %s is not installed (%v)", name, err)
			}
			if installed.Version != want {
				missing("npm package %s is %s in node_modules, package.json pins %s", name, installed.Version, want)
			}
		}
	}
	return pkg
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// tempDir is a directory for the agent and the generated client, removed
// at the end with whatever the agent left mounted below it. Sandbox roots
// run as unprivileged users: the path must be searchable.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "arcbox-e2e-tsclient-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if left := agenttest.UnmountUnder(dir); len(left) > 0 {
			t.Errorf("could not unmount %v; leaving %s", left, dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startAgent starts an agent with its files under dir and a TCP listener
// on loopback that wants a bearer token (node's fetch speaks no unix
// sockets). It returns the listener's URL and the token. At the end it
// removes the sandboxes the script left (see removeLeft) and stops the
// agent.
func startAgent(t *testing.T, dir, busybox string) (url, token string) {
	t.Helper()
	mounts := filepath.Join(dir, "mounts")
	if err := os.MkdirAll(mounts, 0o755); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	token = hex.EncodeToString(b)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The test runs in a network namespace of its own: nothing else binds.
	addr := fmt.Sprintf("127.0.0.1:%d", agenttest.FreePort(t))
	a := &agenttest.Agent{Dir: dir, Args: agenttest.Flags(dir,
		"--listen", "tcp://"+addr,
		"--auth-token-file", tokenFile,
		"--sandbox-busybox", busybox,
		"--sandbox-mount-root", mounts,
		"--set-clock=false",
		"--prepare-system=false",
		"--log-format", "json",
	)}
	// Up once listing sandboxes answers 200; a 503 says the sandbox
	// backend is still starting.
	a.ReadyPath = "/v1/sandboxes"
	a.Ready = func(status int) (bool, error) {
		switch status {
		case http.StatusOK:
			return true, nil
		case http.StatusServiceUnavailable:
			return false, nil
		}
		return false, fmt.Errorf("GET /v1/sandboxes answered %d: the sandbox backend did not start", status)
	}
	a.StartTimeout = time.Minute
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() { removeLeft(t, a) })
	a.LogOnFailure(t)
	return "http://" + addr, token
}

// removeLeft force-removes the sandboxes the script left: it removes
// its own, so each one is an error.
func removeLeft(t *testing.T, a *agenttest.Agent) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := a.Client(t)
	list, err := c.ListSandboxesWithResponse(ctx, nil)
	if err != nil || list.JSON200 == nil {
		t.Errorf("list the sandboxes left: %v %v", err, list)
		return
	}
	for _, s := range list.JSON200.Sandboxes {
		t.Errorf("the script left sandbox %s; removing it", s.Id)
		r, err := c.RemoveSandboxWithResponse(ctx, s.Id, &api.RemoveSandboxParams{Force: agenttest.Ptr(true)})
		if err != nil || r.StatusCode() != http.StatusNoContent {
			t.Errorf("remove %s: %v %v", s.Id, err, r)
		}
	}
}

// fetchSpec is the contract the agent serves, as a client would get it.
func fetchSpec(t *testing.T, url, token string) []byte {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url+"/openapi.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /openapi.yaml: %s: %s", resp.Status, body)
	}
	return body
}

// writeTSConfig writes gen/tsconfig.json: the package's tsconfig.json,
// with the generated types as the module agent-api and the compiled
// script in gen/out.
func writeTSConfig(t *testing.T, pkg, gen string) {
	t.Helper()
	cfg := map[string]any{
		"extends": filepath.Join(pkg, "tsconfig.json"),
		"compilerOptions": map[string]any{
			"rootDir": filepath.Join(pkg, "src"),
			"outDir":  filepath.Join(gen, "out"),
			"paths":   map[string][]string{"agent-api": {filepath.Join(gen, "api.d.ts")}},
		},
		"files": []string{filepath.Join(pkg, "src", "main.mts")},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gen, "tsconfig.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// node runs a node program (a step named what) with env added, and
// returns its output; a failure fails the test with that output.
func node(t *testing.T, what string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("not done within %s: %w", scriptTimeout, ctx.Err())
	}
	if err != nil {
		t.Fatalf("%s: %v:\n%s", what, err, strings.TrimSpace(string(out)))
	}
	return string(out)
}
