package httpapi

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
)

func TestDecodeJSONContentType(t *testing.T) {
	for _, tc := range []struct {
		ct, body string
		want     error
	}{
		{"application/json", `{}`, nil},
		{"application/json; charset=utf-8", `{}`, nil},
		{"Application/JSON ;charset=UTF-8", `{}`, nil},
		{"text/plain", `{}`, ErrUnsupportedMediaType},
		{"application/xml", `<a/>`, ErrUnsupportedMediaType},
		{"application/x-www-form-urlencoded", `{}`, ErrUnsupportedMediaType},
		{"", `{}`, ErrUnsupportedMediaType},
		{"application/jsonx", `{}`, ErrUnsupportedMediaType},
		// No body: nothing to decode, whatever the type says.
		{"", ``, ErrEmptyBody},
		{"text/plain", ``, ErrEmptyBody},
		// Blank is a body, and not JSON.
		{"application/json", ` `, ErrBadRequest},
	} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		var v api.PingRequest
		err := DecodeJSON(r, &v)
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%q with %q: got %v, want %v", tc.body, tc.ct, err, tc.want)
		}
		if errors.Is(err, ErrUnsupportedMediaType) && Status(err) != http.StatusUnsupportedMediaType {
			t.Errorf("%q: status %d, want 415", tc.ct, Status(err))
		}
	}
}

func TestDecodeRequiredJSON(t *testing.T) {
	for _, body := range []string{"", "null", " null "} {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		var v api.CreateSandboxRequest
		err := DecodeRequiredJSON(r, &v)
		if Status(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "request body is required: a CreateSandboxRequest object") {
			t.Errorf("body %q: got %v, want a 400 naming the body", body, err)
		}
	}
	// An optional body may be absent, not null.
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("null"))
	r.Header.Set("Content-Type", "application/json")
	var v api.StopSandboxRequest
	if err := DecodeJSON(r, &v); Status(err) != 400 || !strings.Contains(err.Error(), "null; it must be a StopSandboxRequest object") {
		t.Errorf("optional body null: got %v", err)
	}
}

// TestDecodeJSONStrict: what encoding/json lets through and the contract
// does not, each refused with the field named.
func TestDecodeJSONStrict(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		into       any
		wantInMsg  string
	}{
		{"duplicate key", `{"cmd":["a"],"cmd":["b"]}`, &api.RunRequest{}, `key "cmd" is given twice`},
		{"duplicate nested key", `{"cmd":["a"],"env":{"A":"1","A":"2"}}`, &api.RunRequest{}, `field "env": key "A" is given twice`},
		{"duplicate deep key", `{"mounts":[{"source":"/a","target":"/b","target":"/c"}]}`, &api.CreateSandboxRequest{}, `field "mounts[0]": key "target" is given twice`},
		{"null field", `{"labels":null}`, &api.CreateSandboxRequest{}, `field "labels" is null`},
		{"null deep", `{"limits":{"vcpus":null}}`, &api.CreateSandboxRequest{}, `field "limits.vcpus" is null`},
		{"null in array", `{"cmd":[null]}`, &api.RunRequest{}, `field "cmd[0]" is null`},
		{"null map value", `{"cmd":["a"],"env":{"A":null}}`, &api.RunRequest{}, `field "env.A" is null`},
		{"miscased field", `{"TTL_SECONDS":5}`, &api.CreateSandboxRequest{}, `unknown field "TTL_SECONDS" (names are case-sensitive: did you mean "ttl_seconds"?)`},
		{"miscased deep field", `{"limits":{"VCPUs":1}}`, &api.CreateSandboxRequest{}, `unknown field "limits.VCPUs"`},
		{"unknown field", `{"bogus":1}`, &api.CreateSandboxRequest{}, `unknown field "bogus"`},
		{"unknown field with null", `{"bogus":null}`, &api.CreateSandboxRequest{}, `unknown field "bogus"`},
		{"not base64", `{"stdin":"aGVsbG8"}`, &api.ExecClientMessage{}, `field "stdin" is not base64`},
		{"base64 with a newline", `{"stdin":"aGVs\nbG8="}`, &api.ExecClientMessage{}, `field "stdin" is not base64`},
		{"fraction", `{"ttl_seconds":1.5}`, &api.CreateSandboxRequest{}, `field "ttl_seconds" must be an integer, not number 1.5`},
		{"out of int64", `{"ttl_seconds":18446744073709551616}`, &api.CreateSandboxRequest{}, `field "ttl_seconds": 18446744073709551616 is out of range`},
		{"out of int32", `{"limits":{"vcpus":3000000000}}`, &api.CreateSandboxRequest{}, `field "limits.vcpus": 3000000000 is out of range`},
		{"trailing data", `{} {}`, &api.CreateSandboxRequest{}, "data after the JSON value"},
		{"malformed", `{"cmd":`, &api.RunRequest{}, "malformed JSON"},
		{"not an object", `[1]`, &api.RunRequest{}, "the body must be an object, not array"},
		{"too deep", strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1), &api.RunRequest{}, "nests deeper than 32 levels"},
		{"wrong type", `{"cmd":"echo hi"}`, &api.RunRequest{}, `field "cmd" must be an array, not string`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := DecodeJSONBytes([]byte(tc.body), tc.into)
			if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.wantInMsg) {
				t.Errorf("got %v, want a bad request with %q", err, tc.wantInMsg)
			}
		})
	}
}

// TestDecodeJSONIntegers: JSON Schema counts 1.0 and 1e3 as integers, so
// the agent takes them too.
func TestDecodeJSONIntegers(t *testing.T) {
	for body, want := range map[string]int64{
		`{"ttl_seconds":60}`:         60,
		`{"ttl_seconds":60.0}`:       60,
		`{"ttl_seconds":6e1}`:        60,
		`{"ttl_seconds":0.6E+2}`:     60,
		`{"ttl_seconds":600e-1}`:     60,
		`{"ttl_seconds":-0.0}`:       0,
		`{"ttl_seconds":0e99999999}`: 0,
		`{"ttl_seconds":1.000e18}`:   1e18,
		`{ "ttl_seconds" : 6e1 }`:    60,
	} {
		var v api.CreateSandboxRequest
		if err := DecodeJSONBytes([]byte(body), &v); err != nil || v.TtlSeconds == nil || *v.TtlSeconds != want {
			t.Errorf("%s: got %v, %v; want %d", body, v.TtlSeconds, err, want)
		}
	}
	// Several in one body, each in its place.
	var v api.CreateSandboxRequest
	if err := DecodeJSONBytes([]byte(`{"limits":{"vcpus":2e0,"memory_mib":5.12e2},"ttl_seconds":1E1}`), &v); err != nil ||
		*v.Limits.Vcpus != 2 || *v.Limits.MemoryMib != 512 || *v.TtlSeconds != 10 {
		t.Errorf("got %+v %+v, %v", v.Limits, v.TtlSeconds, err)
	}
	for _, body := range []string{`{"ttl_seconds":6.5e0}`, `{"ttl_seconds":1e-1}`, `{"ttl_seconds":1e400}`, `{"ttl_seconds":1e99999999999999999999}`} {
		var v api.CreateSandboxRequest
		if err := DecodeJSONBytes([]byte(body), &v); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), `"ttl_seconds"`) {
			t.Errorf("%s: got %v, want a 400 naming the field", body, err)
		}
	}
}

func TestIntegralLiteral(t *testing.T) {
	for lit, want := range map[string]string{
		"1.0": "1", "1e3": "1000", "-2.50e1": "-25", "0.0": "0", "-0e5": "0", "12.3400e2": "1234",
		"1e19": "10000000000000000000", "1.5": "", "1e-1": "", "1e21": "", "123": "",
	} {
		got, ok := integralLiteral(lit)
		if ok != (want != "") || got != want {
			t.Errorf("integralLiteral(%q) = %q, %v; want %q", lit, got, ok, want)
		}
	}
}

func TestJSONFieldsKeepsSpelling(t *testing.T) {
	typ := reflect.TypeOf(api.CreateSandboxRequest{})
	f := jsonFields(typ)
	if _, ok := f["ttl_seconds"]; !ok || len(f) != typ.NumField() {
		t.Errorf("fields %v", f)
	}
}
