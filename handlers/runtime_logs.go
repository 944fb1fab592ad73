package handlers

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/lifecycle"
)

// GetRuntimeLogs serves a daemon's log as text: all of it, or its last
// tail lines, then what is appended while follow holds the response open.
// What can go wrong before the first byte (an unknown service, a log not
// written yet) has its status; a failure after it ends the response.
func (a *API) GetRuntimeLogs(w http.ResponseWriter, r *http.Request, params api.GetRuntimeLogsParams) {
	opt := lifecycle.LogOptions{Tail: deref(params.Tail), Follow: deref(params.Follow)}
	if params.Tail != nil {
		if err := checkRange(`query parameter "tail"`, int64(opt.Tail), 0, maxLogTail, "a million lines"); err != nil {
			httpapi.WriteErr(w, err)
			return
		}
	}
	ctx, cancel := a.streamContext(r)
	defer cancel()
	stream, err := a.cfg.Runtime.OpenLog(ctx, params.Service, opt)
	switch {
	case errors.Is(err, lifecycle.ErrUnknownService):
		httpapi.WriteErr(w, httpapi.Errorf(httpapi.ErrNotFound, "service %q has no log; the services are containerd and dockerd", params.Service))
		return
	case errors.Is(err, fs.ErrNotExist):
		httpapi.WriteErr(w, httpapi.Errorf(httpapi.ErrNotFound, "%s has no log yet (has the runtime been started? POST /v1/runtime/ensure): %w", params.Service, err))
		return
	case err != nil:
		httpapi.WriteErr(w, fmt.Errorf("open the %s log: %w", params.Service, err))
		return
	}
	defer stream.Close()

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	client := &clientWriter{w: w}
	if opt.Follow {
		// A followed log is sent as it comes, the status line first.
		client.rc = http.NewResponseController(w)
		_ = client.rc.Flush()
	}
	if _, err := io.Copy(client, stream); err != nil {
		if client.err != nil {
			a.log(r).Debug("log stream ended: the client went away", "service", params.Service, "err", err)
		} else {
			a.log(r).Warn("read the log", "service", params.Service, "err", err)
		}
	}
}

// clientWriter writes to the response, sending each write at once when rc
// is set, and remembers a failed write: the client went away.
type clientWriter struct {
	w   io.Writer
	rc  *http.ResponseController
	err error
}

func (c *clientWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err == nil && c.rc != nil {
		err = c.rc.Flush()
	}
	c.err = err
	return n, err
}
