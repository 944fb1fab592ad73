package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// MaxBodyBytes is the largest request body the agent reads.
const MaxBodyBytes = 1 << 20

// Error is the one JSON error shape of the API.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// WriteJSON writes v as the JSON body of a response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// WriteError writes the JSON error body for status with message.
func WriteError(w http.ResponseWriter, status int, message string) {
	body, _ := json.Marshal(Error{Code: status, Message: message})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// DecodeJSON decodes the request body into v strictly: unknown fields,
// trailing data and wrong types are errors that name the field, and a body
// over MaxBodyBytes is ErrTooLarge. An empty body leaves v as it is and
// returns ErrEmptyBody, so callers with optional bodies can accept it.
func DecodeJSON(r *http.Request, v any) error {
	if r.Body == nil || r.Body == http.NoBody {
		return ErrEmptyBody
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return ErrTooLarge
		}
		return fmt.Errorf("%w: read body: %w", ErrBadRequest, err)
	}
	return DecodeJSONBytes(body, v)
}

// DecodeJSONBytes decodes a JSON document (a WebSocket message, say) into v
// as strictly as DecodeJSON does.
func DecodeJSONBytes(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return ErrEmptyBody
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", ErrBadRequest, describeJSONError(err))
	}
	if dec.More() {
		return fmt.Errorf("%w: request body has data after the JSON value", ErrBadRequest)
	}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			return fmt.Sprintf("request body must be a JSON %s, not %s", goTypeToJSON(typeErr.Type.Kind().String()), typeErr.Value)
		}
		return fmt.Sprintf("field %q must be %s, not %s", field, goTypeToJSON(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.Is(err, io.ErrUnexpectedEOF):
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
