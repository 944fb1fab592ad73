package handlers

import (
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// TestContractBounds: every bound and pattern the handlers enforce is the
// one openapi.yaml states, so a generated client refuses what they refuse.
func TestContractBounds(t *testing.T) {
	spec, _ := apitest.Spec(t)
	prop := func(schema string, path ...string) *openapi3.Schema {
		t.Helper()
		s := apitest.Schema(t, schema)
		for _, p := range path {
			switch p {
			case "[]":
				s = s.Items.Value
			case "[0]":
				s = s.PrefixItems[0].Value
			case "{}":
				s = s.AdditionalProperties.Schema.Value
			case "names":
				s = s.PropertyNames.Value
			case "not":
				s = s.Not.Value
			default:
				ref := s.Properties[p]
				if ref == nil {
					t.Fatalf("%s has no %v", schema, path)
				}
				s = ref.Value
			}
		}
		return s
	}
	param := func(path, method, name string) *openapi3.Schema {
		t.Helper()
		item := spec.Paths.Find(path)
		for _, p := range append(item.Parameters, item.GetOperation(method).Parameters...) {
			if p.Value.Name == name {
				if p.Value.Schema.Value.Type.Is("array") {
					return p.Value.Schema.Value.Items.Value
				}
				return p.Value.Schema.Value
			}
		}
		t.Fatalf("%s %s has no parameter %s", method, path, name)
		return nil
	}

	maxima := []struct {
		s        *openapi3.Schema
		min, max float64
	}{
		{prop("CreateSandboxRequest", "ttl_seconds"), 0, maxTTLSeconds},
		{prop("RestoreRequest", "ttl_seconds"), 0, maxTTLSeconds},
		{prop("RunRequest", "timeout_seconds"), 0, maxRunTimeoutSeconds},
		{prop("ExecInit", "timeout_seconds"), 0, maxRunTimeoutSeconds},
		{prop("StopSandboxRequest", "timeout_seconds"), 0, maxStopTimeoutSeconds},
		{prop("Limits", "vcpus"), 0, maxVCPUs},
		{prop("Limits", "memory_mib"), 0, maxMemoryMiB},
		{prop("Limits", "memory_mib", "not"), 1, minMemoryMiB - 1},
		{prop("Limits", "pids"), 0, maxPids},
		{prop("Limits", "pids", "not"), 1, minPids - 1},
		{prop("TTYSize", "width"), 1, maxTTYSide},
		{prop("TTYSize", "height"), 1, maxTTYSide},
		{prop("PingRequest", "timestamp_secs"), 0, float64(maxTimestampSecs)},
		{param("/v1/runtime/logs", "GET", "tail"), 0, maxLogTail},
	}
	for _, m := range maxima {
		if m.s.Min == nil || *m.s.Min != m.min || m.s.Max == nil || *m.s.Max != m.max {
			t.Errorf("%s: bounds %v..%v in openapi.yaml, %v..%v in the handlers", m.s.Description, ptrVal(m.s.Min), ptrVal(m.s.Max), m.min, m.max)
		}
	}
	if n := prop("CheckpointRequest", "name").MaxLength; n == nil || *n != maxSnapshotName {
		t.Errorf("checkpoint name: maxLength %v, want %d", n, maxSnapshotName)
	}
	for _, f := range []string{"username", "password", "identity_token", "registry_token"} {
		if s := prop("RegistryAuth", f); s.MaxLength == nil || *s.MaxLength != maxCredential || s.MinLength != 1 {
			t.Errorf("registry_auth.%s: length %d..%v in openapi.yaml, 1..%d in the handlers", f, s.MinLength, s.MaxLength, maxCredential)
		}
	}

	type pattern struct {
		s    *openapi3.Schema
		rule *rule
	}
	patterns := []pattern{
		{prop("CreateSandboxRequest", "id"), idRule},
		{prop("RestoreRequest", "id"), idRule},
		{spec.Components.Parameters["SandboxID"].Value.Schema.Value, idRule},
		{spec.Components.Parameters["SnapshotID"].Value.Schema.Value, idRule},
		{param("/v1/snapshots", "GET", "sandbox_id"), idRule},
		{param("/v1/events", "GET", "id"), idRule},
		{param("/v1/sandboxes", "GET", "label"), labelFilterRule},
		{param("/v1/snapshots", "GET", "label"), labelFilterRule},
		{prop("CreateSandboxRequest", "rootfs"), rootfsRule},
		{prop("Mount", "source"), mountSourceRule},
		{prop("Mount", "target"), mountTargetRule},
	}
	for _, schema := range []string{"CreateSandboxRequest", "RunRequest", "ExecInit"} {
		patterns = append(patterns,
			pattern{prop(schema, "user"), userRule},
			pattern{prop(schema, "working_dir"), dirRule},
			pattern{prop(schema, "cmd", "[]"), noNULRule},
			pattern{prop(schema, "cmd", "[0]"), noNULRule},
			pattern{prop(schema, "env", "{}"), noNULRule},
			pattern{prop(schema, "env", "names"), envNameRule},
		)
		if s := prop(schema, "cmd", "[0]"); s.MinLength != 1 {
			t.Errorf("%s: cmd[0] may be empty in openapi.yaml; the handlers refuse it", schema)
		}
	}
	for _, p := range patterns {
		if p.s.Pattern != p.rule.re().String() {
			t.Errorf("pattern %q in openapi.yaml, %q in the handlers", p.s.Pattern, p.rule.re())
		}
	}
	for _, schema := range []string{"CreateSandboxRequest", "CheckpointRequest", "RestoreRequest"} {
		if s := prop(schema, "labels", "names"); s.MinLength != 1 {
			t.Errorf("%s: empty label keys allowed in openapi.yaml; the handlers refuse them", schema)
		}
	}
}

func ptrVal(p *float64) any {
	if p == nil {
		return "none"
	}
	return *p
}

// TestMountTargetRule: the target pattern says what the sandbox package's
// checkMount does (absolute, no ".." element, not the root, no NUL).
func TestMountTargetRule(t *testing.T) {
	for target, ok := range map[string]bool{
		"/data": true, "/a/b/c": true, "/a/./b": true, "/a/": true, "//a": true, "/.a": true, "/..a": true, "/a..": true,
		"/a/.../b": true, "/é": true, "/.": false, "/": false, "//": false, "/./.": false, "/..": false, "/a/..": false,
		"/a/../b": false, "/../a": false, "a": false, "": false, "/a\x00": false, "./a": false,
	} {
		if got := mountTargetRule.re().MatchString(target); got != ok {
			t.Errorf("%q: matched %v, want %v", target, got, ok)
		}
	}
}
