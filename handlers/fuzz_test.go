package handlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// The fuzz targets of the request conversions. Each is seeded from
// openapi.yaml's examples of its schema and a few bodies each check must
// refuse, and checks: no panic; the server accepts exactly what the
// contract does (the schema, read by kin-openapi as a generated client's
// validator would); what it refuses is a 400 that names the field; what it
// accepts reaches the domain unchanged.

// fuzzContract runs the common part: decode body into a new value, convert
// it (the handler's checks, and what check says the domain got), and hold
// the answer against the schema's.
func fuzzContract[T any](f *testing.F, schema string, seeds []string, convert func(T) error) {
	for _, ex := range apitest.Examples(f, schema) {
		f.Add(ex)
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	s := apitest.Schema(f, schema)
	f.Fuzz(func(t *testing.T, body []byte) {
		var req T
		err := httpapi.DecodeJSONBytes(body, &req)
		if err == nil {
			err = convert(req)
		}
		if err != nil {
			if httpapi.Status(err) != 400 {
				t.Fatalf("%q: refused with %v, status %d; want 400", body, err, httpapi.Status(err))
			}
			if msg := err.Error(); !strings.Contains(msg, `"`) && !strings.Contains(msg, "JSON") && !strings.Contains(msg, "body") && !strings.Contains(msg, "message") {
				t.Fatalf("%q: error %q names nothing", body, msg)
			}
			if msg := err.Error(); strings.Contains(msg, "given twice") || strings.Contains(msg, "after the JSON value") {
				return // a rule of JSON documents that schemas cannot state
			}
		}
		if !floatExact(body) {
			return // kin-openapi reads numbers as float64, so it cannot judge this one
		}
		contractErr := apitest.ValidateValue(s, body)
		switch {
		case err == nil && contractErr != nil:
			t.Fatalf("%q: the server accepts it, the contract does not: %v", body, contractErr)
		case err != nil && contractErr == nil:
			t.Fatalf("%q: the contract accepts it, the server does not: %v", body, err)
		}
	})
}

// floatExact reports whether every number in body is one a float64 holds
// exactly (and body is JSON at all).
func floatExact(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return true
		}
		if err != nil {
			return true // not JSON: both refuse it
		}
		n, ok := tok.(json.Number)
		if !ok {
			continue
		}
		if len(n) > 64 {
			return false
		}
		exact, ok := new(big.Rat).SetString(string(n))
		f, err := strconv.ParseFloat(string(n), 64)
		if !ok || err != nil {
			return false
		}
		if got := new(big.Rat).SetFloat64(f); got == nil || got.Cmp(exact) != 0 {
			return false
		}
	}
}

func FuzzSpecFromRequest(f *testing.F) {
	fuzzContract(f, "CreateSandboxRequest", []string{
		`{"ttl_seconds":18446744074}`, `{"ttl_seconds":9223372036854775807}`, `{"ttl_seconds":2592001}`, `{"ttl_seconds":2.592e6}`,
		`{"id":""}`, `{"id":"a/b"}`, `{"id":"` + strings.Repeat("a", 65) + `"}`, `{"labels":{"":"x"}}`, `{"cmd":[""]}`, `{"cmd":["a\u0000"]}`,
		`{"cmd":[]}`, `{"env":{"A=B":"1"}}`, `{"env":{"A":"\u0000"}}`, `{"limits":{"memory_mib":7}}`, `{"limits":{"vcpus":1025}}`,
		`{"mounts":[{"source":"/a","target":"/"}]}`, `{"mounts":[{"source":"/a","target":"/x/../y"}]}`, `{"mounts":[{"source":"a","target":"/b"}]}`,
		`{"rootfs":"/a:b"}`, `{"user":"a:b:c"}`, `{"working_dir":"rel"}`, `{"network":{"mode":"host"}}`, `{"labels":null}`,
		`{"limits":{"pids":7}}`, `{"limits":{"pids":8}}`, `{"limits":{"pids":4194305}}`, `{"security":{}}`, `{"security":{"user_namespace":false}}`,
		`{"image":"a","registry_auth":{}}`, `{"registry_auth":{"identity_token":"t"}}`, `{"image":"","registry_auth":{"identity_token":"t"}}`,
		`{"image":"a","registry_auth":{"username":"u"}}`, `{"image":"a","registry_auth":{"password":"p"}}`,
		`{"image":"a","registry_auth":{"username":"u","password":"p","registry_token":"t"}}`,
		`{"image":"a","registry_auth":{"identity_token":"i","registry_token":"t"}}`, `{"image":"a","registry_auth":{"registry_token":""}}`,
		`{"image":"a","registry_auth":{"registry_token":"` + strings.Repeat("é", 4097) + `"}}`,
	}, func(req api.CreateSandboxRequest) error {
		s, err := specFromRequest(req)
		if err != nil {
			return err
		}
		if s.TTL != time.Duration(deref(req.TtlSeconds))*time.Second || s.ID != deref(req.Id) || len(s.Cmd) != len(deref(req.Cmd)) ||
			len(s.Mounts) != len(deref(req.Mounts)) || s.WorkingDir != deref(req.WorkingDir) {
			panic("the spec is not the request")
		}
		if req.Limits != nil && s.Limits.Pids != deref(req.Limits.Pids) {
			panic("the pids limit is not the request's")
		}
		if sec := deref(req.Security); s.Security.HostUsers != (sec.UserNamespace != nil && !*sec.UserNamespace) ||
			s.Security.ReadOnlyRootfs != deref(sec.ReadOnlyRootfs) {
			panic("the security is not the request's")
		}
		if a := req.RegistryAuth; (a == nil) != (s.RegistryAuth == nil) || (a != nil && (s.RegistryAuth.Username != deref(a.Username) ||
			s.RegistryAuth.Password != deref(a.Password) || s.RegistryAuth.IdentityToken != deref(a.IdentityToken) ||
			s.RegistryAuth.RegistryToken != deref(a.RegistryToken))) {
			panic("the registry credentials are not the request's")
		}
		return nil
	})
}

func FuzzProcessFromRequest(f *testing.F) {
	fuzzContract(f, "RunRequest", []string{
		`{}`, `{"cmd":[]}`, `{"cmd":[""]}`, `{"cmd":["a",""]}`, `{"cmd":["a"],"timeout_seconds":18446744074}`,
		`{"cmd":["a"],"timeout_seconds":604801}`, `{"cmd":["a"],"timeout_seconds":-1}`, `{"cmd":["a"],"env":{"":"x"}}`,
		`{"cmd":["a"],"user":"root:"}`, `{"cmd":["a"],"working_dir":"/a\u0000"}`, `{"cmd":[1]}`, `{"cmd":["a"],"tty":"yes"}`,
	}, func(req api.RunRequest) error {
		p, err := processFromRequest(req, "")
		if err != nil {
			return err
		}
		if p.Timeout != time.Duration(deref(req.TimeoutSeconds))*time.Second || len(p.Cmd) != len(req.Cmd) || p.TTY != deref(req.Tty) {
			panic("the process is not the request")
		}
		return nil
	})
}

func FuzzExecClientMessage(f *testing.F) {
	fuzzContract(f, "ExecClientMessage", []string{
		`{}`, `{"stdin":"aGk=","close_stdin":true}`, `{"stdin":"aGk"}`, `{"resize":{"width":0,"height":24}}`,
		`{"resize":{"width":65536,"height":24}}`, `{"resize":{"width":80}}`, `{"init":{"cmd":[""]}}`,
		`{"init":{"cmd":["sh"],"tty_size":{"width":80,"height":65536}}}`, `{"close_stdin":false}`, `{"stdin":null}`,
	}, func(cm api.ExecClientMessage) error {
		p, size, err := checkClientMessage(cm)
		if err != nil {
			return err
		}
		if (cm.Init != nil && len(p.Cmd) != len(cm.Init.Cmd)) || (cm.Resize != nil && (size == nil || int32(size.Width) != cm.Resize.Width)) {
			panic("the message is not what was sent")
		}
		return nil
	})
}

func FuzzRestoreRequest(f *testing.F) {
	fuzzContract(f, "RestoreRequest", []string{
		`{"id":"-x"}`, `{"labels":{"":""}}`, `{"ttl_seconds":18446744074}`, `{"ttl_seconds":2592000}`,
		`{"network_override":{"mode":"tap"}}`, `{"network_override":{"mode":"nat"}}`, `{"network_override":{}}`, `{"labels":null}`,
	}, func(req api.RestoreRequest) error {
		rr, err := restoreFromRequest(req)
		if err != nil {
			return err
		}
		if (req.TtlSeconds == nil) != (rr.TTL == nil) || (req.Labels == nil) != (rr.Labels == nil) || rr.ID != deref(req.Id) {
			panic("the restore request is not the request")
		}
		return nil
	})
}

func FuzzCheckpointRequest(f *testing.F) {
	fuzzContract(f, "CheckpointRequest", []string{
		`{"name":"` + strings.Repeat("é", 256) + `"}`, `{"name":"` + strings.Repeat("é", 257) + `"}`,
		`{"name":"` + strings.Repeat("a", 257) + `"}`, `{"labels":{"":"x"}}`, `{"name":1}`,
	}, func(req api.CheckpointRequest) error {
		cr, err := checkpointFromRequest(req)
		if err != nil {
			return err
		}
		if cr.Name != deref(req.Name) || len(cr.Labels) != len(deref(req.Labels)) {
			panic("the checkpoint request is not the request")
		}
		return nil
	})
}
