package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
)

// Error is the agent's answer outside 2xx: its HTTP status (or, after a
// WebSocket's upgrade, the status its close code 4000+status stands for),
// its message, and the trace id of the request, to find it in the
// agent's log.
type Error struct {
	Code    int
	Message string
	TraceID string
	// Closed says the answer was a WebSocket's close code after the
	// upgrade, not an HTTP status before it.
	Closed bool

	header http.Header // the answer's, for the errors built on this one
}

func (e *Error) Error() string {
	s := fmt.Sprintf("agent answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
	if e.TraceID != "" {
		s += " (trace id " + e.TraceID + ")"
	}
	return s
}

// maxErrorBody bounds how much of an error's body is read.
const maxErrorBody = 64 << 10

// errorFrom reads the error of an answer outside 2xx. A body that is not
// the {"code","message"} shape becomes the message as it is.
func errorFrom(resp *http.Response) *Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	return errorFromBody(resp.StatusCode, resp.Header, body)
}

func errorFromBody(status int, h http.Header, body []byte) *Error {
	e := &Error{Code: status, TraceID: h.Get("X-Trace-Id"), header: h}
	var shape struct {
		Message *string `json:"message"`
	}
	if json.Unmarshal(body, &shape) == nil && shape.Message != nil {
		e.Message = *shape.Message
	} else {
		e.Message = strings.TrimSpace(string(bytes.ToValidUTF8(body, []byte("?"))))
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}

// Check turns an answer of the generated client (c.API()) outside 2xx
// into an *Error, and passes everything else through:
//
//	r, err := client.Check(c.API().GetSandboxWithResponse(ctx, id))
func Check[R interface {
	StatusCode() int
	GetBody() []byte
}](r R, err error) (R, error) {
	if err != nil {
		return r, err
	}
	status := r.StatusCode()
	if status >= 200 && status <= 299 {
		return r, nil
	}
	h := http.Header{}
	// Every generated answer holds the response as HTTPResponse.
	v := reflect.Indirect(reflect.ValueOf(r))
	if v.Kind() == reflect.Struct {
		if f := v.FieldByName("HTTPResponse"); f.IsValid() {
			if resp, ok := f.Interface().(*http.Response); ok && resp != nil {
				h = resp.Header
			}
		}
	}
	return r, errorFromBody(status, h, r.GetBody())
}
