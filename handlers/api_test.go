package handlers_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/arcbox/arcbox-agent/handlers"
	"github.com/arcbox/arcbox-agent/internal/apitest"
)

// TestStreamedBodyFollowsTheSpec: the router lets exactly the operations
// whose request body is not JSON (the uploads) stream past 1 MiB.
func TestStreamedBodyFollowsTheSpec(t *testing.T) {
	spec, _ := apitest.Spec(t)
	streamed := 0
	for path, item := range spec.Paths.Map() {
		for method, op := range item.Operations() {
			rb := op.RequestBody
			raw := rb != nil && rb.Value.Content.Get("application/json") == nil
			url := strings.NewReplacer("{id}", "box-1", "{run_id}", "r-1", "{snapshot_id}", "s-1").Replace(path)
			r := httptest.NewRequest(method, url, nil)
			if got := handlers.StreamedBody(r); got != raw {
				t.Errorf("%s %s (%s): StreamedBody %v, want %v", method, path, op.OperationID, got, raw)
			}
			if raw {
				streamed++
			}
		}
	}
	if streamed == 0 {
		t.Error("no operation takes a streamed body; the files uploads should")
	}
}
