// Package sandboxtest holds what the tests of package sandbox (over a fake
// backend) and of package oci (over the real one) share. It must not
// import package sandbox, whose own tests import it.
package sandboxtest

import (
	"testing"
	"time"
)

// WaitFor polls cond until it holds; the deadline only bounds a hang.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute) // bounds a hang only
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
