package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/getkin/kin-openapi/openapi3"

	"github.com/arcbox/arcbox-agent/internal/apitest"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// How many requests the contract test makes of each operation: enough that
// every kind of change is tried on every operation, few enough that the
// test takes a few seconds under the race detector.
const (
	contractCalls   = 30
	contractSeed    = 12
	contractMinEach = 3 // valid and invalid requests each operation must get
)

// TestContract is the contract fuzzer: for every operation of openapi.yaml
// it makes requests from the schemas, deterministically (a seeded PRNG),
// valid ones and ones with one thing wrong (a wrong type, a number out of
// range, a string too long or off its pattern, a required field left out,
// an unknown field, null, a key given twice, a body that is not JSON),
// asks the contract which are valid, sends them to the real router, and
// checks: no 5xx; every response is valid against the contract (the
// transport checks); what the contract refuses is refused with a 4xx
// (415 for a body that is not JSON, 400 else); what it accepts is not.
func TestContract(t *testing.T) {
	h := newContractHarness(t)
	spec, _ := apitest.Spec(t)
	g := apitest.NewGen(contractSeed)
	c := &http.Client{Transport: &apitest.Transport{T: t, SkipRequestValidation: true}}
	for _, path := range slices.Sorted(func(yield func(string) bool) {
		for p := range spec.Paths.Map() {
			if !yield(p) {
				return
			}
		}
	}) {
		item := spec.Paths.Find(path)
		for _, method := range slices.Sorted(func(yield func(string) bool) {
			for m := range item.Operations() {
				if !yield(m) {
					return
				}
			}
		}) {
			op := item.GetOperation(method)
			t.Run(op.OperationID, func(t *testing.T) {
				o := contractOp{method: method, path: path, op: op, params: append(slices.Clone(item.Parameters), op.Parameters...)}
				o.run(t, h.url, c, g)
			})
		}
	}
}

// newContractHarness is the harness with a fake manager that answers
// every operation, and logs to tail.
func newContractHarness(t *testing.T) *harness {
	h := newHarness(t, false)
	h.sandboxes = &fakeSandboxes{code: 3, output: []sandbox.Output{
		{Stream: sandbox.StreamStdout, Data: []byte("out")},
		{Stream: sandbox.StreamStderr, Data: []byte("err")},
		{Stream: sandbox.StreamStdout, Truncated: "a background process kept the pipe open and kept writing"},
	}}
	for _, s := range []string{"containerd", "dockerd"} {
		must(t, os.WriteFile(filepath.Join(h.runtime.logDir, s+".log"), []byte("line 1\nline 2\n"), 0o644))
	}
	return h
}

type contractOp struct {
	method, path string
	op           *openapi3.Operation
	params       openapi3.Parameters
}

// call is one request the test makes.
type call struct {
	path        map[string]string
	query       url.Values
	body        []byte // nil: none
	contentType string
	// notJSON: the body is not one JSON document with unique keys (a
	// key given twice, data after the value), which the contract refuses
	// (info.description, RFC 8259) though kin-openapi reads past it.
	notJSON bool
	// wrongType: the change was the Content-Type, so 415 is the answer.
	wrongType bool
	what      string
}

func (o *contractOp) bodySchema() (*openapi3.Schema, bool) {
	if o.op.RequestBody == nil {
		return nil, false
	}
	rb := o.op.RequestBody.Value
	mt := rb.Content["application/json"]
	if mt == nil {
		return nil, false // a raw body (a file, a tar): sent by its own tests
	}
	return mt.Schema.Value, rb.Required
}

// webSocket reports whether the operation is a WebSocket endpoint only
// (run and exec; events is NDJSON without the handshake).
func (o *contractOp) webSocket() bool {
	_, ok := o.op.Responses.Map()["101"]
	return ok && o.op.Responses.Map()["200"] == nil
}

func (o *contractOp) run(t *testing.T, base string, c *http.Client, g *apitest.Gen) {
	bodySchema, _ := o.bodySchema()
	hasBody := bodySchema != nil
	calls := contractCalls
	if !hasBody && len(o.params) == 0 {
		calls = contractMinEach // nothing to vary
	}
	var valid, invalid int
	for i := range calls {
		cl := o.validCall(g)
		if i%3 != 0 {
			o.mutate(g, &cl)
		}
		req := o.request(t, base, cl)
		contractErr := apitest.ValidateRequest(t, req)
		ok := contractErr == nil && !cl.notJSON
		if ok && o.op.OperationID == "streamEvents" {
			continue // an accepted one streams the fake's events, which it has none of; e2e/sandbox covers it
		}
		resp, err := c.Do(req)
		must(t, err)
		body := readContractBody(o, req, resp)
		what := fmt.Sprintf("%s %s (%s; body %.200s): %d %.300s", req.Method, req.URL, cl.what, cl.body, resp.StatusCode, body)
		switch {
		case resp.StatusCode >= 500:
			t.Errorf("server error: %s", what)
		case ok:
			valid++
			if resp.StatusCode == 400 || resp.StatusCode == 413 || resp.StatusCode == 415 {
				t.Errorf("the contract accepts it, the server does not: %s", what)
			}
			if o.webSocket() && resp.StatusCode != http.StatusUpgradeRequired {
				t.Errorf("a WebSocket endpoint asked without the handshake: %s, want 426", what)
			}
		default:
			invalid++
			want := http.StatusBadRequest
			if cl.wrongType {
				want = http.StatusUnsupportedMediaType
			}
			if resp.StatusCode != want {
				t.Errorf("the contract refuses it (%v), the server answers %d, want %d: %s", firstLine(contractErr), resp.StatusCode, want, what)
			}
		}
	}
	t.Logf("%d valid and %d invalid requests", valid, invalid)
	if valid < contractMinEach && o.op.OperationID != "streamEvents" {
		t.Errorf("only %d valid requests made of %d", valid, calls)
	}
	if invalid < contractMinEach && (hasBody || len(o.params) > 0) {
		t.Errorf("only %d invalid requests made of %d", invalid, calls)
	}
}

// validCall makes a request the contract most likely accepts.
func (o *contractOp) validCall(g *apitest.Gen) call {
	cl := call{path: map[string]string{}, query: url.Values{}, what: "as generated"}
	for _, p := range o.params {
		pv := p.Value
		if pv.In == "query" && !pv.Required && g.R.IntN(2) == 0 {
			continue
		}
		v := g.Valid(pv.Schema.Value)
		switch pv.In {
		case "path":
			cl.path[pv.Name] = fmt.Sprint(v)
		case "query":
			if items, ok := v.([]any); ok {
				for _, it := range items {
					cl.query.Add(pv.Name, fmt.Sprint(it))
				}
			} else {
				cl.query.Set(pv.Name, fmt.Sprint(v))
			}
		}
	}
	if s, required := o.bodySchema(); s != nil && (required || g.R.IntN(4) != 0) {
		cl.body = marshalNumbers(g.Valid(s))
		cl.contentType = "application/json"
	}
	return cl
}

// mutate changes one thing in cl: mostly what the contract refuses, now
// and then a form of what it accepts that a server might not (an integer
// written 5e0, a charset parameter).
func (o *contractOp) mutate(g *apitest.Gen, cl *call) {
	s, _ := o.bodySchema()
	kinds := []string{}
	if s != nil {
		kinds = append(kinds, "body", "body", "body", "raw", "type", "form")
	}
	if len(o.params) > 0 {
		kinds = append(kinds, "param", "param")
	}
	if len(kinds) == 0 {
		return
	}
	switch kinds[g.R.IntN(len(kinds))] {
	case "body":
		var v any
		if cl.body == nil || json.Unmarshal(cl.body, &v) != nil {
			v = g.Valid(s)
		}
		v, cl.what = g.Mutate(s, v)
		cl.body = marshalNumbers(v)
		cl.contentType = "application/json"
	case "raw":
		cl.contentType = "application/json"
		raws := []string{"null", "[]", `"x"`, "{", `{} {}`, " "}
		if m, ok := jsonObject(cl.body); ok && len(m) > 0 && g.R.IntN(2) == 0 {
			k := slices.Sorted(func(yield func(string) bool) {
				for k := range m {
					if !yield(k) {
						return
					}
				}
			})[0]
			v, _ := json.Marshal(m[k])
			cl.body = append([]byte(fmt.Sprintf(`{%q:%s,`, k, v)), cl.body[1:]...)
			cl.notJSON, cl.what = true, fmt.Sprintf("key %q given twice", k)
			return
		}
		r := raws[g.R.IntN(len(raws))]
		cl.body, cl.what, cl.notJSON = []byte(r), fmt.Sprintf("body %q", r), r == `{} {}`
	case "type":
		if len(cl.body) == 0 {
			cl.body = []byte("{}")
		}
		types := []string{"text/plain", "application/xml", "application/x-www-form-urlencoded", ""}
		cl.contentType = types[g.R.IntN(len(types))]
		cl.wrongType, cl.what = true, fmt.Sprintf("Content-Type %q", cl.contentType)
	case "form":
		if g.R.IntN(2) == 0 {
			cl.contentType = "application/json; charset=utf-8"
			cl.what = "a charset"
			return
		}
		cl.body = integersAsExponents(cl.body)
		cl.what = "integers written with exponents"
	case "param":
		p := o.params[g.R.IntN(len(o.params))].Value
		bad, what := g.Mutate(p.Schema.Value, g.Valid(p.Schema.Value))
		val := fmt.Sprint(bad)
		switch b := bad.(type) {
		case []any:
			if len(b) > 0 {
				val = fmt.Sprint(b[0])
			}
		case nil:
			val = "null"
		}
		if p.In == "path" && (val == "" || strings.Contains(val, "/")) {
			val = "-bad" // the router would not find the operation
		}
		cl.what = fmt.Sprintf("parameter %s: %s", p.Name, what)
		if p.In == "path" {
			cl.path[p.Name] = val
		} else {
			cl.query.Set(p.Name, val)
		}
	}
}

func (o *contractOp) request(t *testing.T, base string, cl call) *http.Request {
	path := o.path
	for name, v := range cl.path {
		path = strings.ReplaceAll(path, "{"+name+"}", url.PathEscape(v))
	}
	u := base + path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequest(o.method, u, body)
	must(t, err)
	if cl.contentType != "" {
		req.Header.Set("Content-Type", cl.contentType)
	}
	return req
}

// readContractBody reads the response as far as it ends by itself: a
// followed log never does.
func readContractBody(o *contractOp, req *http.Request, resp *http.Response) []byte {
	defer resp.Body.Close()
	if o.op.OperationID == "getRuntimeLogs" && req.URL.Query().Get("follow") == "true" && resp.StatusCode == 200 {
		return nil
	}
	if (o.op.OperationID == "getSandboxStats" || o.op.OperationID == "getGuestStats") && req.URL.Query().Has("interval") && resp.StatusCode == 200 {
		return nil // the fake's sandbox never stops, nor its guest: the stream goes on
	}
	b, _ := io.ReadAll(resp.Body)
	return b
}

// marshalNumbers is json.Marshal, keeping json.Number literals as written.
func marshalNumbers(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func jsonObject(b []byte) (map[string]any, bool) {
	var m map[string]any
	return m, json.Unmarshal(b, &m) == nil && m != nil
}

// integersAsExponents writes each non-negative integer in body as NeE0.
func integersAsExponents(body []byte) []byte {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var out bytes.Buffer
	last := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		n, ok := tok.(json.Number)
		if !ok || strings.ContainsAny(string(n), ".eE-") {
			continue
		}
		end := int(dec.InputOffset())
		out.Write(body[last : end-len(n)])
		out.WriteString(string(n) + "e0")
		last = end
	}
	out.Write(body[last:])
	return out.Bytes()
}

func firstLine(err error) string {
	if err == nil {
		return "not one JSON document"
	}
	line, _, _ := strings.Cut(err.Error(), "\n")
	return line
}

// TestContractWebSocketMessages does for the WebSocket messages what
// TestContract does for requests: run requests and exec client messages
// made from their schemas, the invalid ones refused with a 4400 close,
// the valid ones answered with OutputMessages the contract accepts.
func TestContractWebSocketMessages(t *testing.T) {
	h := newContractHarness(t)
	g := apitest.NewGen(contractSeed)
	ws := "ws" + strings.TrimPrefix(h.url, "http") + "/v1/sandboxes/box-1/"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	run := apitest.Schema(t, "RunRequest")
	msg := apitest.Schema(t, "ExecClientMessage")
	codes := map[string]map[string]any{"run": closeCodes(t, "runInSandboxWebSocket"), "exec": closeCodes(t, "execInSandbox")}
	var valid, invalid int
	for i := range contractCalls {
		endpoint, schema := "run", run
		if i%2 == 1 {
			endpoint, schema = "exec", msg
		}
		v := g.Valid(schema)
		if endpoint == "exec" {
			v = map[string]any{"init": g.Valid(msg.Properties["init"].Value)}
		}
		what := "as generated"
		if i%3 != 0 {
			v, what = g.Mutate(schema, v)
		}
		first := marshalNumbers(v)
		ok := apitest.ValidateValue(schema, first) == nil
		if m, isObj := v.(map[string]any); endpoint == "exec" && isObj && m["init"] == nil {
			ok = false // valid as a message, but the first must be init
		}
		c, _, err := websocket.Dial(ctx, ws+endpoint, nil)
		must(t, err)
		must(t, c.Write(ctx, websocket.MessageText, first))
		if endpoint == "exec" && ok {
			must(t, c.Write(ctx, websocket.MessageText, []byte(`{"close_stdin":true}`)))
		}
		var got []string
		for {
			_, b, err := c.Read(ctx)
			if err != nil {
				status := websocket.CloseStatus(err)
				if codes[endpoint][strconv.Itoa(int(status))] == nil {
					t.Errorf("%s: closed with %d, which its x-websocket does not list", endpoint, status)
				}
				switch {
				case ok && status != websocket.StatusNormalClosure:
					t.Errorf("%s: %s (%s): the contract accepts it, the server closed with %d: %v", endpoint, first, what, status, err)
				case !ok && status != 4400:
					t.Errorf("%s: %s (%s): the contract refuses it, the server closed with %d, want 4400: %v", endpoint, first, what, status, err)
				}
				break
			}
			got = append(got, string(b))
			if err := apitest.ValidateJSON(t, "OutputMessage", b); err != nil {
				t.Errorf("%s: message %s is no OutputMessage: %v", endpoint, b, err)
			}
		}
		_ = c.CloseNow()
		if ok {
			valid++
			if len(got) == 0 || !strings.Contains(got[len(got)-1], `"done":true`) {
				t.Errorf("%s: %s: no exit message: %q", endpoint, first, got)
			}
		} else {
			invalid++
		}
	}
	if valid < contractMinEach || invalid < contractMinEach {
		t.Errorf("%d valid and %d invalid first messages; want %d of each", valid, invalid, contractMinEach)
	}
	t.Logf("%d valid and %d invalid first messages", valid, invalid)
}

// TestContractStreams: every streamed response is a 200 whose body is a
// binary string (so generators hand over a stream or raw body, not one
// decoded value) with its item's schema in x-item-schema; every WebSocket
// operation lists its 426, and its x-websocket says the frames, the
// server's messages and its close codes.
func TestContractStreams(t *testing.T) {
	spec, _ := apitest.Spec(t)
	streamed := map[string][]string{
		"runInSandbox":    {"application/x-ndjson"},
		"streamRunOutput": {"application/x-ndjson"},
		"streamEvents":    {"application/x-ndjson", "text/event-stream"},
		"getRuntimeLogs":  {"text/plain"},
		"getSandboxStats": {"application/x-ndjson"},
		"getGuestStats":   {"application/x-ndjson"},
	}
	webSockets := map[string]bool{"runInSandboxWebSocket": true, "execInSandbox": true, "streamEvents": true, "streamRunOutput": true}
	seen := map[string]bool{}
	for path, item := range spec.Paths.Map() {
		for method, op := range item.Operations() {
			what := fmt.Sprintf("%s %s (%s)", method, path, op.OperationID)
			for _, ct := range streamed[op.OperationID] {
				seen[op.OperationID] = true
				mt := op.Responses.Status(http.StatusOK).Value.Content.Get(ct)
				if mt == nil {
					t.Errorf("%s: no 200 %s", what, ct)
					continue
				}
				if s := mt.Schema.Value; !s.Type.Is("string") || s.Format != "binary" {
					t.Errorf("%s: 200 %s is %v %q, want a binary string", what, ct, s.Type, s.Format)
				}
				if _, err := apitest.ItemSchema(t, op, http.StatusOK, ct); err != nil {
					t.Errorf("%s: 200 %s: %v", what, ct, err)
				}
			}
			if op.Responses.Status(http.StatusSwitchingProtocols) == nil {
				if op.Extensions["x-websocket"] != nil {
					t.Errorf("%s: x-websocket without a 101", what)
				}
				continue
			}
			seen[op.OperationID] = true
			if !webSockets[op.OperationID] {
				t.Errorf("%s: a WebSocket operation this test does not know", what)
			}
			checkWebSocketContract(t, what, op)
		}
	}
	for id := range webSockets {
		if !seen[id] {
			t.Errorf("%s: not in the contract", id)
		}
	}
}

func checkWebSocketContract(t *testing.T, what string, op *openapi3.Operation) {
	t.Helper()
	if r := op.Responses.Status(http.StatusUpgradeRequired); r == nil || r.Value.Content.Get("application/json") == nil {
		t.Errorf("%s: no 426 in the JSON error shape", what)
	}
	ws, ok := op.Extensions["x-websocket"].(map[string]any)
	if !ok {
		t.Errorf("%s: no x-websocket", what)
		return
	}
	if ws["frames"] != "text" {
		t.Errorf("%s: x-websocket frames %v, want text", what, ws["frames"])
	}
	schemas := []string{"server-messages", "first-client-message"}
	if op.OperationID == "streamEvents" || op.OperationID == "streamRunOutput" {
		schemas = schemas[:1] // its client sends nothing
	}
	if op.OperationID == "execInSandbox" || op.OperationID == "runInSandboxWebSocket" {
		schemas = append(schemas, "client-messages")
	}
	for _, name := range schemas {
		if _, err := apitest.ExtensionSchema(t, ws, name); err != nil {
			t.Errorf("%s: x-websocket: %v", what, err)
		}
	}
	codes, ok := ws["close-codes"].(map[string]any)
	if !ok || len(codes) == 0 {
		t.Errorf("%s: x-websocket has no close-codes", what)
	}
	for code, why := range codes {
		if n, err := strconv.Atoi(code); err != nil || n < 1000 || n > 4999 || why == "" {
			t.Errorf("%s: close code %q (%v) is not a code from 1000 to 4999 with what it means", what, code, why)
		}
	}
}

// closeCodes returns the close codes the contract lists for the WebSocket
// operation id.
func closeCodes(t *testing.T, id string) map[string]any {
	t.Helper()
	spec, _ := apitest.Spec(t)
	for _, item := range spec.Paths.Map() {
		for _, op := range item.Operations() {
			if op.OperationID == id {
				ws, _ := op.Extensions["x-websocket"].(map[string]any)
				codes, _ := ws["close-codes"].(map[string]any)
				return codes
			}
		}
	}
	t.Fatalf("no operation %s", id)
	return nil
}

// TestContractExamples: every example in the contract's schemas is valid
// against its schema, as a JSON Schema 2020-12 validator reads it.
func TestContractExamples(t *testing.T) {
	spec, _ := apitest.Spec(t)
	for name := range spec.Components.Schemas {
		for _, ex := range apitest.Examples(t, name) {
			if err := apitest.ValidateJSON(t, name, ex); err != nil {
				t.Errorf("schema %s: example %s: %v", name, ex, err)
			}
		}
	}
}
