package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
)

// Schema returns the schema named name in openapi.yaml.
func Schema(t testing.TB, name string) *openapi3.Schema {
	t.Helper()
	spec, _ := Spec(t)
	ref := spec.Components.Schemas[name]
	if ref == nil || ref.Value == nil {
		t.Fatalf("openapi.yaml has no schema %s", name)
	}
	return ref.Value
}

// ValidateJSON checks doc, one JSON document, against the schema named
// name as a client generated from openapi.yaml would (JSON Schema 2020-12,
// as OpenAPI 3.1 says): nil when the schema accepts it. Use it for
// WebSocket messages, which the transport does not see.
func ValidateJSON(t testing.TB, name string, doc []byte) error {
	t.Helper()
	return ValidateValue(Schema(t, name), doc)
}

// ValidateValue checks doc against s; see ValidateJSON.
func ValidateValue(s *openapi3.Schema, doc []byte) error {
	var v any
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return s.VisitJSON(v, openapi3.EnableJSONSchema2020())
}

// Examples returns the examples openapi.yaml gives for the schema named
// name, each as JSON.
func Examples(t testing.TB, name string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, ex := range Schema(t, name).Examples {
		b, err := json.Marshal(ex)
		if err != nil {
			t.Fatalf("schema %s: example %v: %v", name, ex, err)
		}
		out = append(out, b)
	}
	return out
}

// ValidateRequest checks a request against openapi.yaml (its operation,
// parameters, Content-Type and body) as a generated client would: nil
// when the contract accepts it. req's body is left to be sent.
func ValidateRequest(t testing.TB, req *http.Request) error {
	t.Helper()
	_, router := Spec(t)
	route, pathParams, err := router.FindRoute(req)
	if err != nil {
		return err
	}
	var body []byte
	if req.Body != nil {
		if body, err = io.ReadAll(req.Body); err != nil {
			return err
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	in := &openapi3filter.RequestValidationInput{
		Request:    req.Clone(context.Background()),
		PathParams: pathParams,
		Route:      route,
		Options:    &openapi3filter.Options{MultiError: true, AuthenticationFunc: Authenticate},
	}
	in.Request.Body = io.NopCloser(bytes.NewReader(body))
	return openapi3filter.ValidateRequest(context.Background(), in)
}
