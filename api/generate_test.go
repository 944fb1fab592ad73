package api

import (
	"bytes"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestGeneratedCodeIsCurrent regenerates the server and client from
// openapi.yaml and fails when the committed files differ: run `make
// generate` after changing the spec.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the code generator")
	}
	for cfg, committed := range map[string]string{"server.cfg.yaml": "server.gen.go", "client.cfg.yaml": "client.gen.go"} {
		dir := t.TempDir()
		out := filepath.Join(dir, committed)
		conf, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		conf = bytes.Replace(conf, []byte("output: "+committed), []byte("output: "+out), 1)
		tmpCfg := filepath.Join(dir, cfg)
		if err := os.WriteFile(tmpCfg, conf, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("go", "tool", "oapi-codegen", "-config", tmpCfg, "../openapi.yaml")
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("oapi-codegen -config %s: %v\n%s", cfg, err, msg)
		}
		want, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(committed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make generate` and commit the result", committed)
		}
	}
}

// TestNoYAMLDecoder: the agent links this package for the server
// interface, so a YAML decoder imported here would be in its binary and
// run its init at every start. oapi-codegen imports one as soon as an
// application/yaml answer has a schema: GET /openapi.yaml's has none (see
// generate.go).
func TestNoYAMLDecoder(t *testing.T) {
	for _, file := range []string{"server.gen.go", "client.gen.go"} {
		f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); strings.Contains(path, "yaml") {
				t.Errorf("%s imports %s: give the application/yaml answer in openapi.yaml no schema", file, path)
			}
		}
	}
}
