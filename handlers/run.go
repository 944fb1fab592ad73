package handlers

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/internal/base64x"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// RunInSandbox runs a command and streams its output as NDJSON, each piece
// as it is produced, the exit code last. The status line waits for the
// process to start (or for its first output), so a run that cannot start
// still gets its error status.
func (a *API) RunInSandbox(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	if !checkPathID(w, id) {
		return
	}
	p, ok := decodeBody(w, r, true, func(req api.RunRequest) (sandbox.Process, error) { return processFromRequest(req, "") })
	if !ok {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	if p, ok = resolveCmdOrAnswer(w, m, id, p); !ok {
		return
	}
	ctx, cancel := a.streamContext(r)
	defer cancel()
	rc := http.NewResponseController(w)
	started := false
	start := func() {
		if !started {
			started = true
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusOK)
		}
	}
	var enc outputEncoder
	var cut cutStreams
	var runID string
	began := time.Now()
	eio := sandbox.ExecIO{Started: func(info sandbox.RunInfo) {
		runID = info.ID
		if p.DetachOnDisconnect {
			start()
			_, _ = w.Write(enc.start(runID, true))
			_ = rc.Flush()
		}
	}}
	code, err := m.Exec(ctx, id, p, eio, func(o sandbox.Output) error {
		if cut.note(o) {
			return nil
		}
		start()
		if _, err := w.Write(enc.data(o.Stream, o.Data, true)); err != nil {
			return err
		}
		return rc.Flush()
	})
	if err != nil && !started && ctx.Err() == nil {
		writeSandboxErr(w, err)
		return
	}
	a.logRun(r, id, code, err, began, &cut)
	if code == sandbox.ExitDetached {
		return // its client is gone; the run goes on
	}
	start()
	_, _ = w.Write(enc.exit(code, runID, &cut, true))
}

// logRun logs how a run or exec ended: its exit code, how long it took,
// the streams that were cut, and the error that ended it early.
func (a *API) logRun(r *http.Request, id string, code int, err error, began time.Time, cut *cutStreams) {
	log := a.log(r).With("sandbox", id, "exit_code", code, "took", time.Since(began))
	if len(cut.why) > 0 {
		log = log.With("truncated", strings.Join(cut.why, "; "))
	}
	if err != nil {
		log.Info("run ended early", "err", err)
		return
	}
	log.Info("run ended")
}

// RunInSandboxWebSocket runs a command over a WebSocket: the client's first
// message is the run request, then every output message is one text
// message (on the channel subprotocol, one binary message: channel.go). The client's later messages are signals for the command;
// closing the socket hangs it up.
func (a *API) RunInSandboxWebSocket(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	var req api.RunRequest
	a.serveWorkload(w, r, id, "a run", &req, func(ctx context.Context, m SandboxManager, c *websocket.Conn) {
		p, err := processFromRequest(req, "")
		if err != nil {
			closeWith(c, http.StatusBadRequest, err.Error())
			return
		}
		runCtx, hangUp := context.WithCancel(ctx)
		defer hangUp()
		sigs := make(chan sandbox.Signal)
		go signalMessages(runCtx, c, sigs, hangUp)
		a.streamWorkload(ctx, runCtx, c, r, id, p, sandbox.ExecIO{Signals: sigs}, func(eio sandbox.ExecIO, out func(sandbox.Output) error) (int, error) {
			p, err := m.ResolveCmd(id, p)
			if err != nil {
				return -1, err
			}
			return m.Exec(runCtx, id, p, eio, out)
		})
	})
}

// processFromRequest checks a run request against the contract and makes
// it a process. prefix is put before the fields' names in errors ("init."
// for an exec's).
func processFromRequest(req api.RunRequest, prefix string) (sandbox.Process, error) {
	p := sandbox.Process{
		Cmd:        req.Cmd,
		Env:        deref(req.Env),
		WorkingDir: deref(req.WorkingDir),
		User:       deref(req.User),
		TTY:        deref(req.Tty),

		DetachOnDisconnect: deref(req.DetachOnDisconnect),
	}
	if err := checkCmd(prefix+"cmd", p.Cmd, false); err != nil { // none: the image's (ResolveCmd)
		return p, err
	}
	if err := checkEnv(prefix+"env", p.Env); err != nil {
		return p, err
	}
	if err := dirRule.check(fieldName(prefix+"working_dir"), p.WorkingDir); err != nil {
		return p, err
	}
	if err := userRule.check(fieldName(prefix+"user"), p.User); err != nil {
		return p, err
	}
	timeout, err := checkSeconds(fieldName(prefix+"timeout_seconds"), deref(req.TimeoutSeconds), maxRunTimeoutSeconds, "7 days")
	p.Timeout = timeout
	return p, err
}

// cutStreams remembers the streams that were cut (sandbox.Output's
// Truncated notices), and why, for the exit message.
type cutStreams struct {
	streams []string
	why     []string
}

// note records o when it says its stream was cut, and reports whether o
// is only that notice, with no data to send.
func (c *cutStreams) note(o sandbox.Output) bool {
	if o.Truncated == "" {
		return false
	}
	if !slices.Contains(c.streams, o.Stream) {
		c.streams = append(c.streams, o.Stream)
		c.why = append(c.why, o.Stream+" was cut: "+o.Truncated)
	}
	return len(o.Data) == 0
}

// outputEncoder writes OutputMessages as JSON into a buffer it reuses, so
// streaming a gigabyte allocates nothing per chunk.
type outputEncoder struct{ buf []byte }

func (e *outputEncoder) data(stream string, p []byte, newline bool) []byte {
	e.buf = append(e.buf[:0], `{"stream":"`...)
	e.buf = append(e.buf, stream...) // stdout or stderr: nothing to escape
	e.buf = append(e.buf, `","data":"`...)
	e.buf = base64x.AppendEncode(e.buf, p)
	e.buf = append(e.buf, `"}`...)
	if newline {
		e.buf = append(e.buf, '\n')
	}
	return e.buf
}

// chunk writes a piece of a run's kept output, with its offset.
func (e *outputEncoder) chunk(c sandbox.OutputChunk, newline bool) []byte {
	e.data(c.Stream, c.Data, false)
	e.buf = e.buf[:len(e.buf)-1] // reopen the object
	e.buf = append(e.buf, `,"offset":`...)
	e.buf = strconv.AppendInt(e.buf, c.Offset, 10)
	e.buf = append(e.buf, '}')
	if newline {
		e.buf = append(e.buf, '\n')
	}
	return e.buf
}

// start writes the first message of a run that detaches on disconnect:
// its id, to reattach with.
func (e *outputEncoder) start(runID string, newline bool) []byte {
	e.buf = append(e.buf[:0], `{"stream":"start","run_id":`...)
	e.buf = strconv.AppendQuote(e.buf, runID) // r- and hex digits: nothing to escape
	e.buf = append(e.buf, '}')
	if newline {
		e.buf = append(e.buf, '\n')
	}
	return e.buf
}

// exit writes the exit message, which names the run and the streams that
// were cut.
func (e *outputEncoder) exit(code int, runID string, cut *cutStreams, newline bool) []byte {
	var streams []string
	if cut != nil {
		streams = cut.streams
	}
	return e.exitMessage(code, runID, -1, streams, cut, newline)
}

// runExit writes the exit message of a run's kept output: its exit code
// (-1 for a run that never started or was lost), and the output's end.
func (e *outputEncoder) runExit(info sandbox.RunInfo, newline bool) []byte {
	code := -1
	if info.ExitCode != nil {
		code = *info.ExitCode
	}
	var cut *cutStreams
	if len(info.Truncated) > 0 {
		cut = &cutStreams{streams: info.Truncated, why: []string{"a process it left behind kept writing to " + strings.Join(info.Truncated, " and ") + " after it exited: stopped reading it"}}
	}
	return e.exitMessage(code, info.ID, info.OutputEnd, info.Truncated, cut, newline)
}

func (e *outputEncoder) exitMessage(code int, runID string, offset int64, streams []string, cut *cutStreams, newline bool) []byte {
	e.buf = append(e.buf[:0], `{"stream":"exit","exit_code":`...)
	e.buf = strconv.AppendInt(e.buf, int64(code), 10)
	e.buf = append(e.buf, `,"done":true`...)
	if runID != "" {
		e.buf = append(e.buf, `,"run_id":`...)
		e.buf = strconv.AppendQuote(e.buf, runID)
	}
	if sig := sandbox.ExitSignal(code); sig != "" {
		e.buf = append(e.buf, `,"signal":"`...)
		e.buf = append(e.buf, sig...)
		e.buf = append(e.buf, '"')
	}
	if offset >= 0 {
		e.buf = append(e.buf, `,"offset":`...)
		e.buf = strconv.AppendInt(e.buf, offset, 10)
	}
	if len(streams) > 0 {
		list, _ := json.Marshal(streams)
		message, _ := json.Marshal(strings.Join(cut.why, "; "))
		e.buf = append(e.buf, `,"truncated":`...)
		e.buf = append(e.buf, list...)
		e.buf = append(e.buf, `,"message":`...)
		e.buf = append(e.buf, message...)
	}
	e.buf = append(e.buf, '}')
	if newline {
		e.buf = append(e.buf, '\n')
	}
	return e.buf
}
