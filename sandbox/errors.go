package sandbox

import (
	"errors"

	"github.com/arcbox/arcbox-agent/internal/errclass"
)

// The error classes the Manager returns. Every error it returns is of one of
// them (test with errors.Is), with a message that names the field or object,
// e.g. `field "kernel": not supported by the container backend`. The class
// is not part of the message (see Errorf). The HTTP layer maps them to 404,
// 400, 409, 503, 507 and 429.
var (
	// ErrNotFound: the sandbox does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: the request is malformed or asks for what the backend cannot do.
	ErrInvalid = errors.New("invalid input")
	// ErrConflict: the sandbox is in the wrong state for the operation, or an
	// id is reused with a different spec.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: the sandbox subsystem cannot serve (no runtime binary,
	// the manager is closed).
	ErrUnavailable = errors.New("unavailable")
	// ErrNoSpace: a record or a file the operation needs could not be
	// written for lack of space (ENOSPC, EDQUOT) on the state dir. The
	// operation was rolled back: nothing it began is left behind.
	ErrNoSpace = errors.New("no space left on the state dir")
	// ErrBusy: too many operations of this kind are queued already; try
	// again later (the HTTP layer answers 429 with Retry-After).
	ErrBusy = errors.New("busy")
)

// Errorf is fmt.Errorf's message, of class (one of the Err classes above):
// errors.Is finds the class and every %w operand, and the message is only
// what format says, so people read no "...: conflict" tail.
func Errorf(class error, format string, args ...any) error {
	return errclass.Errorf(class, format, args...)
}

// Classify gives err a class without changing its message.
func Classify(class, err error) error { return errclass.Classify(class, err) }

// ErrManagerClosed: the manager was closed (agent shutdown).
var ErrManagerClosed = errors.New("sandbox manager closed")
