// Package apitest checks, in tests, that the agent keeps its contract: it
// wraps the generated client's transport so that every request and
// response is validated against openapi.yaml, validates what the
// transport does not see (WebSocket messages), and makes values from the
// contract's schemas (Gen, Examples) for contract and fuzz tests.
package apitest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	arcboxagent "github.com/arcbox/arcbox-agent"
	"github.com/arcbox/arcbox-agent/api"
)

var (
	loadOnce sync.Once
	spec     *openapi3.T
	router   routers.Router
	loadErr  error
)

// Spec returns the parsed, validated contract and a router over it.
func Spec(t testing.TB) (*openapi3.T, routers.Router) {
	t.Helper()
	loadOnce.Do(func() {
		loader := openapi3.NewLoader()
		spec, loadErr = loader.LoadFromData(arcboxagent.OpenAPI)
		if loadErr != nil {
			return
		}
		if loadErr = spec.Validate(context.Background()); loadErr != nil {
			return
		}
		spec.Servers = nil // match any host
		router, loadErr = gorillamux.NewRouter(spec)
	})
	if loadErr != nil {
		t.Fatalf("openapi.yaml: %v", loadErr)
	}
	return spec, router
}

// Transport validates each exchange against the contract and reports any
// disagreement as a test error. Streaming bodies (NDJSON, Server-Sent
// Events) are validated item by item, against their media type's
// x-item-schema, as the test reads them.
type Transport struct {
	T    testing.TB
	Base http.RoundTripper
	// SkipRequestValidation lets a test send what the contract forbids,
	// to see the server refuse it; the response is still validated.
	SkipRequestValidation bool
}

// RoundTrip implements http.RoundTripper.
func (tr *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	tr.T.Helper()
	_, router := Spec(tr.T)
	var reqBody []byte
	if req.Body != nil {
		var err error
		if reqBody, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	route, pathParams, err := router.FindRoute(req)
	if err != nil {
		tr.T.Errorf("contract: %s %s has no operation in openapi.yaml: %v", req.Method, req.URL.Path, err)
		return tr.base().RoundTrip(req)
	}
	reqInput := &openapi3filter.RequestValidationInput{
		Request:    req.Clone(req.Context()),
		PathParams: pathParams,
		Route:      route,
		Options:    &openapi3filter.Options{MultiError: true, AuthenticationFunc: Authenticate},
	}
	reqInput.Request.Body = io.NopCloser(bytes.NewReader(reqBody))
	if !tr.SkipRequestValidation {
		if err := openapi3filter.ValidateRequest(req.Context(), reqInput); err != nil {
			tr.T.Errorf("contract: request %s %s: %v", req.Method, req.URL.Path, err)
		}
		reqInput.Request.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := tr.base().RoundTrip(req)
	if err != nil {
		return nil, err
	}
	reqInput.Options = &openapi3filter.Options{MultiError: true, IncludeResponseStatus: true, AuthenticationFunc: Authenticate}
	if isStream(resp) || isFollowedText(req, resp) {
		// A stream may never end by itself: check the status and headers
		// now, and each item as the test reads it.
		reqInput.Options.ExcludeResponseBody = true
		validateResponse(tr.T, reqInput, resp, nil)
		if isStream(resp) {
			resp.Body = newStreamValidator(tr.T, route.Operation, resp)
		}
		return resp, nil
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	validateResponse(tr.T, reqInput, resp, body)
	return resp, nil
}

// token68 is RFC 7235's form of a bearer token (RFC 6750 section 2.1).
var token68 = regexp.MustCompile(`^[A-Za-z0-9._~+/-]+=*$`)

// Authenticate is the contract's check of a request's credentials, for
// openapi3filter: the form, not the value, which only the server knows.
// The contract also allows no credentials at all (`security: [{}]`, for
// the unix socket and vsock), which openapi3filter passes without asking.
func Authenticate(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	s := in.SecurityScheme
	if s.Type != "http" || !strings.EqualFold(s.Scheme, "bearer") {
		return in.NewError(fmt.Errorf("security scheme %q: only http bearer is checked", in.SecuritySchemeName))
	}
	scheme, tok, ok := strings.Cut(in.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || !token68.MatchString(tok) {
		return in.NewError(errors.New("no Authorization: Bearer <token> header"))
	}
	return nil
}

func (tr *Transport) base() http.RoundTripper {
	if tr.Base != nil {
		return tr.Base
	}
	return http.DefaultTransport
}

// isStream reports whether resp's body is a stream of items: NDJSON or
// Server-Sent Events.
func isStream(resp *http.Response) bool {
	ct := resp.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/x-ndjson") || strings.HasPrefix(ct, "text/event-stream")
}

func isFollowedText(req *http.Request, resp *http.Response) bool {
	return req.URL.Query().Get("follow") == "true" && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain")
}

func validateResponse(t testing.TB, in *openapi3filter.RequestValidationInput, resp *http.Response, body []byte) {
	t.Helper()
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                in.Options,
	}
	out.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		t.Errorf("contract: response %d to %s %s: %v\nbody: %s", resp.StatusCode, in.Request.Method, in.Request.URL.Path, err, truncate(body))
	}
}

// streamValidator validates a stream's items against the x-item-schema of
// the operation's response, as the test reads them: each NDJSON line, or
// each Server-Sent Event's data (an `event: error` one against Error),
// whose id must be the item's seq.
type streamValidator struct {
	t    testing.TB
	what string
	item *openapi3.Schema
	sse  bool
	r    *bufio.Reader
	c    io.Closer
	line []byte
	pend []byte
	// A Server-Sent Event as far as it has come.
	id, event string
	data      []byte
}

func newStreamValidator(t testing.TB, op *openapi3.Operation, resp *http.Response) *streamValidator {
	ct, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	ct = strings.TrimSpace(ct)
	s := &streamValidator{t: t, what: fmt.Sprintf("%s %d %s", op.OperationID, resp.StatusCode, ct),
		sse: ct == "text/event-stream", r: bufio.NewReader(resp.Body), c: resp.Body}
	var err error
	if s.item, err = ItemSchema(t, op, resp.StatusCode, ct); err != nil {
		t.Errorf("contract: %s: %v", s.what, err)
	}
	return s
}

// ItemSchema returns the schema of one item of a streamed response: the
// x-item-schema of op's response for status, as contentType.
func ItemSchema(t testing.TB, op *openapi3.Operation, status int, contentType string) (*openapi3.Schema, error) {
	t.Helper()
	r := op.Responses.Status(status)
	if r == nil || r.Value == nil {
		return nil, fmt.Errorf("no response %d", status)
	}
	mt := r.Value.Content.Get(contentType)
	if mt == nil {
		return nil, fmt.Errorf("response %d has no %s", status, contentType)
	}
	return ExtensionSchema(t, mt.Extensions, "x-item-schema")
}

// ExtensionSchema returns the schema an x- extension holds: a $ref to one
// of the components' schemas, or a schema written out.
func ExtensionSchema(t testing.TB, ext map[string]any, name string) (*openapi3.Schema, error) {
	t.Helper()
	v, ok := ext[name]
	if !ok {
		return nil, fmt.Errorf("no %s", name)
	}
	if m, ok := v.(map[string]any); ok {
		if ref, ok := m["$ref"].(string); ok {
			schemaName, found := strings.CutPrefix(ref, "#/components/schemas/")
			if !found {
				return nil, fmt.Errorf("%s: $ref %q is not to a component schema", name, ref)
			}
			return Schema(t, schemaName), nil
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var s openapi3.Schema
	if err := s.UnmarshalJSON(b); err != nil {
		return nil, fmt.Errorf("%s is no schema: %w", name, err)
	}
	return &s, nil
}

func (s *streamValidator) Read(p []byte) (int, error) {
	if len(s.pend) == 0 {
		chunk, err := s.r.ReadSlice('\n')
		s.pend = append(s.pend[:0], chunk...)
		s.line = append(s.line, chunk...)
		if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
			s.checkLine()
		}
		if len(s.pend) == 0 {
			if errors.Is(err, bufio.ErrBufferFull) {
				err = nil
			}
			return 0, err
		}
	}
	n := copy(p, s.pend)
	s.pend = s.pend[n:]
	return n, nil
}

func (s *streamValidator) checkLine() {
	line := bytes.TrimRight(s.line, "\r\n")
	s.line = s.line[:0]
	if !s.sse {
		if len(bytes.TrimSpace(line)) > 0 {
			s.checkItem(s.item, line)
		}
		return
	}
	field, value, _ := bytes.Cut(line, []byte(":"))
	value = bytes.TrimPrefix(value, []byte(" "))
	switch string(field) {
	case "":
		if len(line) == 0 {
			s.endEvent()
		}
		// else a comment (a line that begins with a colon)
	case "id":
		s.id = string(value)
	case "event":
		s.event = string(value)
	case "data":
		if s.data == nil {
			s.data = []byte{} // this line's copy: value is s.line's
		} else {
			s.data = append(s.data, '\n')
		}
		s.data = append(s.data, value...)
	default:
		s.t.Errorf("contract: %s: line %q is not one the stream's description has", s.what, line)
	}
}

// endEvent checks a Server-Sent Event at the blank line that ends it.
func (s *streamValidator) endEvent() {
	id, event, data := s.id, s.event, s.data
	s.id, s.event, s.data = "", "", nil
	switch {
	case data == nil && id == "" && event == "":
		return
	case event == "error":
		if err := ValidateJSON(s.t, "Error", data); err != nil {
			s.t.Errorf("contract: %s: event: error with data %s is no Error: %v", s.what, truncate(data), err)
		}
		return
	case event != "":
		s.t.Errorf("contract: %s: event %q is not one the stream's description has", s.what, event)
	}
	s.checkItem(s.item, data)
	var item struct {
		Seq *json.Number `json:"seq"`
	}
	if json.Unmarshal(data, &item) == nil && item.Seq != nil && id != item.Seq.String() {
		s.t.Errorf("contract: %s: event with id %q has seq %s; the id is the seq", s.what, id, item.Seq)
	}
}

func (s *streamValidator) checkItem(schema *openapi3.Schema, item []byte) {
	if schema == nil {
		return
	}
	if err := ValidateValue(schema, item); err != nil {
		s.t.Errorf("contract: %s: item %s: %v", s.what, truncate(item), err)
	}
}

func (s *streamValidator) Close() error { return s.c.Close() }

func truncate(b []byte) string {
	if len(b) > 512 {
		return string(b[:512]) + fmt.Sprintf("... (%d bytes)", len(b))
	}
	return string(b)
}

// NewClient returns the generated client for server, validating every
// exchange. base may be nil for http.DefaultTransport.
func NewClient(t testing.TB, server string, base http.RoundTripper) *api.ClientWithResponses {
	t.Helper()
	return NewClientWith(t, server, &Transport{T: t, Base: base})
}

// NewClientWith is NewClient with a transport the test configured.
func NewClientWith(t testing.TB, server string, tr *Transport) *api.ClientWithResponses {
	t.Helper()
	c, err := api.NewClientWithResponses(server, api.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}
