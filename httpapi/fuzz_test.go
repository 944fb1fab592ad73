package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// requestTypes are the bodies and messages of the contract, by schema name,
// with a new value of each.
var requestTypes = []struct {
	schema string
	new    func() any
}{
	{"PingRequest", func() any { return new(api.PingRequest) }},
	{"RuntimeEnsureRequest", func() any { return new(api.RuntimeEnsureRequest) }},
	{"CreateSandboxRequest", func() any { return new(api.CreateSandboxRequest) }},
	{"StopSandboxRequest", func() any { return new(api.StopSandboxRequest) }},
	{"RunRequest", func() any { return new(api.RunRequest) }},
	{"ExecClientMessage", func() any { return new(api.ExecClientMessage) }},
	{"CheckpointRequest", func() any { return new(api.CheckpointRequest) }},
	{"RestoreRequest", func() any { return new(api.RestoreRequest) }},
}

// FuzzDecodeJSONBytes: whatever the bytes, decoding into any of the
// contract's request types never panics; what it accepts is one JSON
// document with no key twice and no null, and it round-trips; what it
// refuses is a bad request that says what is wrong.
func FuzzDecodeJSONBytes(f *testing.F) {
	for i, rt := range requestTypes {
		for _, ex := range apitest.Examples(f, rt.schema) {
			f.Add(uint8(i), ex)
		}
	}
	for _, s := range []string{`{"cmd":["a"],"cmd":["b"]}`, `{"labels":null}`, `{"TTL_SECONDS":1}`, `{"ttl_seconds":6e1}`,
		`{"stdin":"aGVs\nbG8="}`, `null`, ``, `{} {}`, `[[[[]]]]`, `{"limits":{"vcpus":1.0,"vcpus":2}}`} {
		f.Add(uint8(2), []byte(s))
	}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		rt := requestTypes[int(kind)%len(requestTypes)]
		v := rt.new()
		err := DecodeJSONBytes(body, v)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) && !errors.Is(err, ErrEmptyBody) {
				t.Fatalf("%q: error %v is no bad request", body, err)
			}
			if !strings.ContainsAny(err.Error(), `"`) && !strings.Contains(err.Error(), "JSON") && !strings.Contains(err.Error(), "body") {
				t.Fatalf("%q: error %q says neither field nor what is wrong", body, err)
			}
			return
		}
		if why := notOneStrictDocument(body); why != "" {
			t.Fatalf("%q into %s: accepted, but %s", body, rt.schema, why)
		}
		// It means what encoding/json makes of it, where that takes it.
		std := rt.new()
		if json.Unmarshal(body, std) == nil && !reflect.DeepEqual(v, std) {
			t.Fatalf("%q: accepted as %+v, but encoding/json reads %+v", body, v, std)
		}
		// And it round-trips.
		again := rt.new()
		re, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(re, again); err != nil || !reflect.DeepEqual(v, again) {
			t.Fatalf("%q: accepted as %+v, but its encoding %s decodes to %+v, %v", body, v, re, again, err)
		}
	})
}

// notOneStrictDocument says, independently of scanJSON, why body is not
// one JSON document without null and without a key given twice ("" when
// it is).
func notOneStrictDocument(body []byte) string {
	if !json.Valid(body) {
		return "it is not valid JSON"
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		obj    bool
		keys   map[string]bool
		expKey bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			return "it does not tokenize: " + err.Error()
		}
		top := (*frame)(nil)
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.expKey {
			if d, ok := tok.(json.Delim); !ok || d != '}' {
				k := tok.(string)
				if top.keys[k] {
					return "key " + strconv.Quote(k) + " is given twice"
				}
				top.keys[k] = true
				top.expKey = false
				continue
			}
		}
		if top != nil && top.obj {
			top.expKey = true
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, expKey: true})
		case json.Delim('['):
			stack = append(stack, &frame{})
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].obj {
				stack[len(stack)-1].expKey = true
			}
		case nil:
			return "it holds null"
		}
	}
}

// FuzzParseEndpoint: a listener URL is refused with an error naming it, or
// accepted as an endpoint that its own URL gives back.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"vsock://:1024", "vsock://3:1024", "vsock://:2375", "unix:///run/arcbox/agent.sock",
		"tcp://127.0.0.1:8080", "tcp://:8080", "tcp://[::1]:0", "tcp://[fe80::1%25eth0]:80", "unix://relative.sock",
		"vsock://:0", "tcp://localhost", "http://:80", ":8080", "unix:///a?b", "unix:///a%2Fb/../c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		ep, err := ParseEndpoint(raw)
		if err != nil {
			if !strings.Contains(err.Error(), strconv.Quote(raw)) {
				t.Fatalf("%q: error %q does not name the listener", raw, err)
			}
			return
		}
		u := url.URL{Scheme: ep.Scheme}
		switch ep.Scheme {
		case "tcp":
			u.Host = ep.Address
		case "unix":
			u.Path = ep.Address
		case "vsock":
			u.Host = ":" + strconv.FormatUint(uint64(ep.Port), 10)
			if ep.HasCID {
				u.Host = strconv.FormatUint(uint64(ep.CID), 10) + u.Host
			}
		default:
			t.Fatalf("%q: accepted with scheme %q", raw, ep.Scheme)
		}
		back, err := ParseEndpoint(u.String())
		back.URL = ep.URL
		if err != nil || back != ep {
			t.Fatalf("%q: accepted as %+v, whose URL %q gives %+v, %v", raw, ep, u.String(), back, err)
		}
	})
}

// FuzzPaddedBase64: the check of bytes fields is the contract's pattern
// for them, and what passes it encoding/json decodes.
func FuzzPaddedBase64(f *testing.F) {
	for _, s := range []string{"", "aGk=", "aGVsbG8=", "aGVsbG8", "aGVs\nbG8=", "aGVsbG9=", "====", "a===", "ab==", "abc=", "+/+/", "-_-_"} {
		f.Add(s)
	}
	re := regexp.MustCompile(apitest.Schema(f, "ExecClientMessage").Properties["stdin"].Value.Pattern)
	f.Fuzz(func(t *testing.T, s string) {
		ok := isPaddedBase64(s)
		if ok != re.MatchString(s) {
			t.Fatalf("%q: isPaddedBase64 %v, the contract's pattern %v", s, ok, !ok)
		}
		if _, err := base64.StdEncoding.DecodeString(s); ok && err != nil {
			t.Fatalf("%q passes, but encoding/json would refuse it: %v", s, err)
		}
	})
}
