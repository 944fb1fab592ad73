package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
)

// errNullBody marks a body that is the JSON null, which no operation takes.
var errNullBody = errors.New("the body is null")

// DecodeJSON decodes an optional request body into v, as strictly as the
// contract reads it: a body that is not application/json is
// ErrUnsupportedMediaType; unknown or miscased fields, a key given twice,
// null anywhere, trailing data and wrong types are ErrBadRequest naming the
// field; a body over MaxBodyBytes is ErrTooLarge; one that comes too slowly
// is ErrBodyTimeout. An absent (zero-length) body, whatever its
// Content-Type, leaves v as it is and returns ErrEmptyBody, so callers
// with optional bodies can accept it.
func DecodeJSON(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	if len(body) == 0 {
		return ErrEmptyBody
	}
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return err
	}
	return DecodeJSONBytes(body, v)
}

// DecodeRequiredJSON is DecodeJSON for an operation whose body is
// required: an absent or null body is an ErrBadRequest that names the
// object the body must be.
func DecodeRequiredJSON(r *http.Request, v any) error {
	err := DecodeJSON(r, v)
	if errors.Is(err, ErrEmptyBody) || errors.Is(err, errNullBody) {
		return Errorf(ErrBadRequest, "request body is required: a %s object", typeName(v))
	}
	return err
}

// DecodeJSONBytes decodes a JSON document (a WebSocket message, say) into v
// as strictly as DecodeJSON does; empty input is ErrEmptyBody.
func DecodeJSONBytes(body []byte, v any) error {
	if len(body) == 0 {
		return ErrEmptyBody
	}
	body, err := scanJSON(body, reflect.TypeOf(v))
	if err != nil {
		if errors.Is(err, errNullBody) {
			return Errorf(ErrBadRequest, "%w; it must be a %s object", err, typeName(v))
		}
		return err
	}
	// The scan has checked the syntax, the field names (unknown ones
	// included) and that nothing follows the value; what is left is the
	// types, which encoding/json checks as it decodes.
	if err := json.Unmarshal(body, v); err != nil {
		return Errorf(ErrBadRequest, "%s", describeJSONError(err))
	}
	return nil
}

// readBody reads the whole body; limitBody bounds its size and how long it
// may take.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		return body, nil
	case errors.As(err, &mbe):
		return nil, ErrTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, Errorf(ErrBodyTimeout, "the request body did not arrive in time: %d bytes of it came, then it stalled", len(body))
	}
	return nil, Errorf(ErrBadRequest, "read the body: %w", err)
}

// checkContentType accepts application/json with any parameters, as
// kin-openapi's matching of the contract's media types does.
func checkContentType(ct string) error {
	base, _, _ := strings.Cut(strings.ToLower(strings.TrimSpace(ct)), ";")
	if ct == "" {
		return Errorf(ErrUnsupportedMediaType, "request body is not application/json: the request has a body but no Content-Type")
	}
	switch strings.TrimSpace(base) {
	case "application/json":
		return nil
	case "application/x-www-form-urlencoded":
		return Errorf(ErrUnsupportedMediaType, "request body is not application/json: its Content-Type is %q (curl -d sends that; send JSON with curl --json)", ct)
	}
	return Errorf(ErrUnsupportedMediaType, "request body is not application/json: its Content-Type is %q", ct)
}

// typeName is the name of the type v points to: the generated types are
// named as the contract's schemas are.
func typeName(v any) string {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Name() == "" {
		return "JSON"
	}
	return t.Name()
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		want := goTypeToJSON(typeErr.Type.Kind().String())
		if typeErr.Field == "" {
			return fmt.Sprintf("the body must be %s, not %s", want, typeErr.Value)
		}
		if n, ok := strings.CutPrefix(typeErr.Value, "number "); ok && want == "an integer" && !strings.ContainsAny(n, ".eE") {
			return fmt.Sprintf("field %q: %s is out of range", typeErr.Field, n)
		}
		return fmt.Sprintf("field %q must be %s, not %s", typeErr.Field, want, typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "malformed JSON: the body ends too early"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func goTypeToJSON(kind string) string {
	switch kind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "bool":
		return "a boolean"
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return kind
}
