package httpapi

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
)

// auditLines returns the audit lines among the JSON log lines.
func auditLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	return logLines(t, logs, "audit")
}

// logLines returns the JSON log lines whose msg is msg.
func logLines(t *testing.T, logs, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, sc.Text())
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestAuditOnUnixSocket: each mutating call, and only those, is audited
// with the unix peer's credentials as SO_PEERCRED gives them.
func TestAuditOnUnixSocket(t *testing.T) {
	var logs lockedWriter
	c := serveUnix(t, newAuthRouter(&logs))
	upgrade := http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}, "X-Trace-Id": {"t-ws"}}
	do(t, c, http.MethodGet, "http://agent/v1/ping", nil)
	do(t, c, http.MethodGet, "http://agent/v1/sandboxes/box1", nil)
	do(t, c, http.MethodPost, "http://agent/v1/ping", http.Header{"X-Trace-Id": {"t-post"}})
	do(t, c, http.MethodDelete, "http://agent/v1/sandboxes/box1?force=true", nil)
	do(t, c, http.MethodDelete, "http://agent/v1/snapshots/snap1", nil)
	do(t, c, http.MethodGet, "http://agent/v1/sandboxes/box1/run", upgrade)
	c.Transport.(*http.Transport).CloseIdleConnections()

	lines := auditLines(t, logs.String())
	if len(lines) != 4 {
		t.Fatalf("%d audit lines, want 4 (POST, 2 DELETE, the WebSocket run):\n%s", len(lines), logs.String())
	}
	for _, l := range lines {
		peer, _ := l["peer"].(map[string]any)
		if l["component"] != "audit" || l["transport"] != "unix" || !strings.HasPrefix(l["listener"].(string), "unix://") ||
			l["authenticated"] != true || l["auth"] != "unix-socket" ||
			peer["uid"] != float64(os.Getuid()) || peer["gid"] != float64(os.Getgid()) || peer["pid"] != float64(os.Getpid()) ||
			l["trace_id"] == "" || l["took"] == nil {
			t.Errorf("audit line lacks who: %v", l)
		}
		if strings.Contains(l["path"].(string), "?") {
			t.Errorf("audit line holds a query string: %v", l)
		}
	}
	want := []struct {
		method, route, idKey, id string
		status                   float64
	}{
		{"POST", "/v1/ping", "", "", 200},
		{"DELETE", "/v1/sandboxes/{id}", "sandbox_id", "box1", 204},
		{"DELETE", "/v1/snapshots/{id}", "snapshot_id", "snap1", 501},
		{"GET", "/v1/sandboxes/{id}/run", "sandbox_id", "box1", 501},
	}
	for i, w := range want {
		l := lines[i]
		if l["method"] != w.method || l["route"] != w.route || l["status"] != w.status || (w.idKey != "" && l[w.idKey] != w.id) {
			t.Errorf("audit line %d = %v, want %s %s %s=%s status %v", i, l, w.method, w.route, w.idKey, w.id, w.status)
		}
	}
	if lines[0]["trace_id"] != "t-post" || lines[3]["trace_id"] != "t-ws" {
		t.Errorf("trace ids: %v, %v", lines[0]["trace_id"], lines[3]["trace_id"])
	}
}

// TestAuditRefusedCalls: a mutating call refused for want of a token is
// audited, unauthenticated, with the route it was aimed at; a refused
// read is not.
func TestAuditRefusedCalls(t *testing.T) {
	var logs lockedWriter
	base := serveTCP(t, newAuthRouter(&logs))
	do(t, http.DefaultClient, http.MethodGet, base+"/v1/ping", nil)
	do(t, http.DefaultClient, http.MethodDelete, base+"/v1/sandboxes/box2?access_token="+testToken, nil)
	do(t, http.DefaultClient, http.MethodPost, base+"/v1/ping", bearerHeader("wrong-"+testToken))
	do(t, http.DefaultClient, http.MethodPost, base+"/v1/ping", bearerHeader(testToken))

	lines := auditLines(t, logs.String())
	if len(lines) != 3 {
		t.Fatalf("%d audit lines, want 3:\n%s", len(lines), logs.String())
	}
	for i, w := range []struct {
		route  string
		status float64
		auth   string
	}{
		{"/v1/sandboxes/{id}", 401, "refused"},
		{"/v1/ping", 401, "refused"},
		{"/v1/ping", 200, "bearer"},
	} {
		l := lines[i]
		if l["route"] != w.route || l["status"] != w.status || l["auth"] != w.auth || l["authenticated"] != (w.auth == "bearer") ||
			l["transport"] != "tcp" || !strings.HasPrefix(l["peer"].(string), "127.0.0.1:") {
			t.Errorf("audit line %d = %v, want %s %v %s from a TCP peer", i, l, w.route, w.status, w.auth)
		}
	}
	if lines[0]["sandbox_id"] != "box2" {
		t.Errorf("refused DELETE: sandbox_id = %v", lines[0]["sandbox_id"])
	}
	if strings.Contains(logs.String(), testToken) {
		t.Errorf("a log line holds the token:\n%s", logs.String())
	}
}
