package handlers

import (
	"testing"

	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// TestStatsIntervalPattern: ?interval='s pattern is the contract's, so a
// generated client refuses what the handlers refuse.
func TestStatsIntervalPattern(t *testing.T) {
	spec, _ := apitest.Spec(t)
	p := spec.Components.Parameters["StatsInterval"].Value.Schema.Value.Pattern
	if p != intervalRule.re().String() {
		t.Errorf("pattern %q in openapi.yaml, %q in the handlers", p, intervalRule.re())
	}
}
