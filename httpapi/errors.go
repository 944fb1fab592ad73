package httpapi

import (
	"errors"
	"net/http"

	"github.com/arcbox/arcbox-agent/internal/errclass"
)

// The error classes of handlers' and the decoder's errors; Status maps each
// to its HTTP status in one place. Make an error of a class with Errorf or
// Classify, so that the class is not part of the message: a client reads
// `field "cmd" is required`, not `invalid request: field "cmd" ...`.
var (
	ErrBadRequest           = errors.New("invalid request")
	ErrEmptyBody            = errors.New("empty request body")
	ErrTooLarge             = errors.New("request body is over 1 MiB")
	ErrUnsupportedMediaType = errors.New("request body is not application/json")
	ErrBodyTimeout          = errors.New("the request body did not arrive in time")
	ErrNotFound             = errors.New("not found")
	ErrConflict             = errors.New("conflict")
	ErrUnavailable          = errors.New("unavailable")
	ErrNotImplemented       = errors.New("not implemented")
)

// Errorf is fmt.Errorf's message, of class (one of the Err classes above):
// errors.Is finds the class and every %w operand, and the message is only
// what format says.
func Errorf(class error, format string, args ...any) error {
	return errclass.Errorf(class, format, args...)
}

// Classify gives err a class without changing its message.
func Classify(class, err error) error { return errclass.Classify(class, err) }

// Status returns the HTTP status for err by its class; 500 when it has none.
func Status(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrEmptyBody):
		return http.StatusBadRequest
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrUnsupportedMediaType):
		return http.StatusUnsupportedMediaType
	case errors.Is(err, ErrBodyTimeout):
		return http.StatusRequestTimeout
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrNotImplemented):
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// WriteErr writes err as a JSON error with the status of its class.
func WriteErr(w http.ResponseWriter, err error) {
	WriteError(w, Status(err), err.Error())
}
