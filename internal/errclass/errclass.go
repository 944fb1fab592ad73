// Package errclass gives an error a class (a sentinel such as
// sandbox.ErrConflict or httpapi.ErrBadRequest) without putting the class
// in its message: errors.Is finds the class, and people read only what
// the error says ("sandbox \"x\" is running", not "...: conflict").
package errclass

import "fmt"

// Errorf is fmt.Errorf's error, of class: errors.Is finds the class and
// every %w operand.
func Errorf(class error, format string, args ...any) error {
	return Classify(class, fmt.Errorf(format, args...))
}

// Classify gives err a class without changing its message.
func Classify(class, err error) error { return &classified{err: err, class: class} }

type classified struct{ err, class error }

func (e *classified) Error() string   { return e.err.Error() }
func (e *classified) Unwrap() []error { return []error{e.err, e.class} }
