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
// disagreement as a test error. Streaming bodies (NDJSON) are validated
// line by line as the test reads them.
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
	if isStream(resp) {
		resp.Body = &streamValidator{t: tr.T, input: reqInput, resp: resp, r: bufio.NewReader(resp.Body), c: resp.Body}
		return resp, nil
	}
	if isFollowedText(req, resp) {
		// A followed log never ends by itself: check the status and
		// headers now and hand the body over as it comes.
		validateResponse(tr.T, reqInput, resp, nil)
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

func isStream(resp *http.Response) bool {
	ct := resp.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/x-ndjson") || resp.StatusCode == http.StatusSwitchingProtocols
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

// streamValidator validates each NDJSON line of a streaming body against
// the operation's schema for that content type, as the test reads it.
type streamValidator struct {
	t     testing.TB
	input *openapi3filter.RequestValidationInput
	resp  *http.Response
	r     *bufio.Reader
	c     io.Closer
	line  []byte
	pend  []byte
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
	line := bytes.TrimSpace(s.line)
	s.line = s.line[:0]
	if len(line) == 0 {
		return
	}
	fake := &http.Response{StatusCode: s.resp.StatusCode, Header: http.Header{"Content-Type": {"application/json"}}}
	in := *s.input
	// Validate the line as if the stream's schema were served as JSON.
	route := *in.Route
	op := *route.Operation
	resps := openapi3.NewResponses()
	for code, r := range op.Responses.Map() {
		rc := *r.Value
		content := openapi3.Content{}
		for ct, mt := range rc.Content {
			if strings.HasPrefix(ct, "application/x-ndjson") {
				content["application/json"] = mt
			}
		}
		rc.Content = content
		resps.Set(code, &openapi3.ResponseRef{Value: &rc})
	}
	op.Responses = resps
	route.Operation = &op
	in.Route = &route
	validateResponse(s.t, &in, fake, line)
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
