package handlers

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/clock"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// GetPing answers pong and the version.
func (a *API) GetPing(w http.ResponseWriter, _ *http.Request) {
	writeJSONBody(w, a.pingBody)
}

// jsonLine is v as JSON and a newline, for an answer encoded once and
// written by writeJSONBody. v is of strings only: it cannot fail.
func jsonLine(v any) []byte {
	body, _ := json.Marshal(v)
	return append(body, '\n')
}

// writeJSONBody answers 200 with body, JSON already encoded. Like
// httpapi.WriteJSON's, the answer has a Content-Length: net/http counts a
// body written whole before the handler returns.
func writeJSONBody(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

// PostPing answers pong and, given the host's time, reports the guest
// clock's drift and steps the clock past the threshold.
func (a *API) PostPing(w http.ResponseWriter, r *http.Request) {
	var req api.PingRequest
	if err := httpapi.DecodeJSON(r, &req); err != nil && !errors.Is(err, httpapi.ErrEmptyBody) {
		httpapi.WriteErr(w, err)
		return
	}
	host, threshold, err := hostTime(req)
	if err != nil {
		httpapi.WriteErr(w, err)
		return
	}
	resp := api.PingResponse{Message: "pong", Version: a.cfg.Version}
	if req.Message != nil && *req.Message != "" {
		resp.Message = "pong: " + *req.Message
	}
	if !host.IsZero() {
		res := a.cfg.Clock.Sync(host, threshold)
		driftMs := res.Drift.Milliseconds()
		resp.ClockDriftMs, resp.ClockStepped = &driftMs, &res.Stepped
		log := a.log(r)
		switch {
		case res.Err != nil:
			msg := res.Err.Error()
			resp.ClockError = &msg
			log.Warn("could not step the clock to the host's time", "drift", res.Drift, "err", res.Err)
		case res.Stepped:
			log.Info("stepped the clock to the host's time", "drift", res.Drift, "host_time", host)
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, resp)
}

// hostTime reads the host's time from a ping, and the drift threshold its
// precision allows. A zero time means the ping carried none. Its checks
// are the contract's (PingRequest's bounds and its if/then).
func hostTime(req api.PingRequest) (time.Time, time.Duration, error) {
	var secs, nanos int64
	if req.TimestampSecs != nil {
		secs = *req.TimestampSecs
	}
	if req.TimestampNanos != nil {
		nanos = *req.TimestampNanos
	}
	switch {
	case secs < 0 || secs > maxTimestampSecs:
		return time.Time{}, 0, checkRange(fieldName("timestamp_secs"), secs, 0, maxTimestampSecs, "2262-04-11, the last second Unix nanoseconds hold")
	case nanos < 0:
		return time.Time{}, 0, httpapi.Errorf(httpapi.ErrBadRequest, `field "timestamp_nanos" must not be negative`)
	case nanos > 0 && nanos < int64(time.Second) && secs > 0:
		// proto3 Timestamp style: nanos is the fraction of secs.
		return time.Unix(secs, nanos), clock.PreciseThreshold, nil
	case nanos >= int64(time.Second):
		// A whole time in nanoseconds wins over timestamp_secs, as the
		// contract says.
		return time.Unix(0, nanos), clock.PreciseThreshold, nil
	case nanos > 0:
		return time.Time{}, 0, httpapi.Errorf(httpapi.ErrBadRequest, `field "timestamp_nanos" (%d) is under one second since 1970; send Unix nanoseconds, or it with "timestamp_secs" as its fraction`,
			nanos)
	case secs > 0:
		return time.Unix(secs, 0), clock.WholeSecondThreshold, nil
	}
	return time.Time{}, 0, nil
}
