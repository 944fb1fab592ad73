package errclass

import (
	"errors"
	"testing"
)

func TestClassIsFoundButNotRead(t *testing.T) {
	class, cause := errors.New("conflict"), errors.New("device busy")
	err := Errorf(class, "sandbox %q: %w", "x", cause)
	if !errors.Is(err, class) || !errors.Is(err, cause) {
		t.Errorf("errors.Is misses the class or the cause of %v", err)
	}
	if got, want := err.Error(), `sandbox "x": device busy`; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	if got := Classify(class, cause); !errors.Is(got, class) || got.Error() != "device busy" {
		t.Errorf("Classify: %v", got)
	}
}
