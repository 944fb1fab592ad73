package handlers

import (
	"encoding/json"
	"testing"

	"github.com/arcbox/arcbox-agent/api"
)

// TestPingBodyFollowsTheVersion: the ping answer encoded once is that of
// the API's version, for APIs of several versions side by side.
func TestPingBodyFollowsTheVersion(t *testing.T) {
	for _, version := range []string{"1.0", "2.0", "2.0", "1.0", `quo"te`} {
		var got api.PingResponse
		body := New(Config{Version: version}).pingBody
		if err := json.Unmarshal(body, &got); err != nil || got.Message != "pong" || got.Version != version || body[len(body)-1] != '\n' {
			t.Errorf("version %q: answer %q (%v), want pong and the version, then a newline", version, body, err)
		}
	}
}
