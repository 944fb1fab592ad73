package handlers

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/coder/websocket"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/internal/wschannel"
	"github.com/arcbox/arcbox-agent/sandbox"
)

// OutputFirstOffsetHeader carries, on a 410, the first offset of a run's
// output still kept.
const OutputFirstOffsetHeader = "X-Output-First-Offset"

// managerOf checks the sandbox id and returns the manager, or answers (400,
// 503) and returns nil.
func (a *API) managerOf(w http.ResponseWriter, r *http.Request, id string) SandboxManager {
	if !checkPathID(w, id) {
		return nil
	}
	return a.manager(w, r)
}

// checkRunID checks a run id path parameter; false when it has answered.
func checkRunID(w http.ResponseWriter, runID string) bool {
	if err := idRule.check(`path parameter "run_id"`, runID); err != nil {
		httpapi.WriteErr(w, err)
		return false
	}
	return true
}

// StartRun starts a detached run: 201 with the run once its process has
// started.
func (a *API) StartRun(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.StartRunParams) {
	if !checkPathID(w, id) {
		return
	}
	req, ok := decodeBody(w, r, true, func(req api.RunRequest) (sandbox.RunRequest, error) {
		p, err := processFromRequest(req, "")
		return sandbox.RunRequest{Process: p, Stdin: deref(params.Stdin)}, err
	})
	if !ok {
		return
	}
	m := a.managerOf(w, r, id)
	if m == nil {
		return
	}
	if req.Process, ok = resolveCmdOrAnswer(w, m, id, req.Process); !ok {
		return
	}
	info, err := m.StartRun(id, req)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	a.log(r).Info("run started", "sandbox", id, "run", info.ID, "pid", info.Pid)
	httpapi.WriteJSON(w, http.StatusCreated, runInfo(info))
}

// ListRuns lists a sandbox's runs.
func (a *API) ListRuns(w http.ResponseWriter, r *http.Request, id api.SandboxID) {
	m := a.managerOf(w, r, id)
	if m == nil {
		return
	}
	list, err := m.Runs(id)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	out := api.RunList{Runs: make([]api.RunInfo, 0, len(list))}
	for _, info := range list {
		out.Runs = append(out.Runs, runInfo(info))
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// GetRun answers one run.
func (a *API) GetRun(w http.ResponseWriter, r *http.Request, id api.SandboxID, runID string) {
	m := a.managerOf(w, r, id)
	if m == nil || !checkRunID(w, runID) {
		return
	}
	info, err := m.GetRun(id, runID)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, runInfo(info))
}

// SignalRun sends a signal to a run's process.
func (a *API) SignalRun(w http.ResponseWriter, r *http.Request, id api.SandboxID, runID string) {
	if !checkPathID(w, id) || !checkRunID(w, runID) {
		return
	}
	sig, ok := decodeBody(w, r, true, func(req api.SignalRequest) (sandbox.Signal, error) {
		sig, err := sandbox.ParseSignal(string(req.Signal))
		if err != nil {
			return 0, badRequest("%s", err.Error())
		}
		return sig, nil
	})
	if !ok {
		return
	}
	m := a.managerOf(w, r, id)
	if m == nil {
		return
	}
	if err := m.SignalRun(r.Context(), id, runID, sig); err != nil {
		writeSandboxErr(w, err)
		return
	}
	info, err := m.GetRun(id, runID)
	if err != nil {
		writeSandboxErr(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, runInfo(info))
}

// WriteRunStdin writes to a detached run's stdin, or closes it.
func (a *API) WriteRunStdin(w http.ResponseWriter, r *http.Request, id api.SandboxID, runID string) {
	if !checkPathID(w, id) || !checkRunID(w, runID) {
		return
	}
	req, ok := decodeBody(w, r, true, func(req api.StdinRequest) (api.StdinRequest, error) { return req, nil })
	if !ok {
		return
	}
	m := a.managerOf(w, r, id)
	if m == nil {
		return
	}
	if err := m.WriteRunStdin(r.Context(), id, runID, deref(req.Data), deref(req.Close)); err != nil {
		writeSandboxErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// StreamRunOutput serves a run's kept output from an offset, as NDJSON or
// a WebSocket, following it when asked. What is wrong with the request
// (an unknown run, an offset past the end or no longer kept) is answered
// before the stream begins.
func (a *API) StreamRunOutput(w http.ResponseWriter, r *http.Request, id api.SandboxID, runID string, params api.StreamRunOutputParams) {
	m := a.managerOf(w, r, id)
	if m == nil || !checkRunID(w, runID) {
		return
	}
	offset, follow := deref(params.Offset), deref(params.Follow)
	info, err := m.GetRun(id, runID)
	if err == nil {
		err = sandbox.CheckOutputOffset(info, offset)
	}
	if err != nil {
		writeOutputErr(w, err)
		return
	}
	ctx, cancel := a.streamContext(r)
	defer cancel()
	var enc outputEncoder
	if httpapi.WantsWebSocket(r) {
		c := httpapi.AcceptWebSocket(w, r)
		if c == nil {
			return
		}
		defer func() { _ = c.CloseNow() }()
		ctx = c.CloseRead(ctx)
		end, err := m.ReadRunOutput(ctx, id, runID, offset, follow, func(chunks []sandbox.OutputChunk) error {
			for _, ch := range chunks {
				if err := c.Write(ctx, websocket.MessageText, enc.chunk(ch, false)); err != nil {
					return err
				}
			}
			return nil
		})
		var gone *sandbox.OutputGoneError
		switch {
		case errors.As(err, &gone):
			closeWith(c, http.StatusGone, err.Error())
		case ctx.Err() != nil || err != nil:
			_ = c.Close(websocket.StatusGoingAway, "the agent is shutting down")
		default:
			if end.State != sandbox.RunRunning {
				if err := c.Write(ctx, websocket.MessageText, enc.runExit(end, false)); err != nil {
					return
				}
			}
			_ = c.Close(websocket.StatusNormalClosure, "")
		}
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	_ = rc.Flush()
	end, err := m.ReadRunOutput(ctx, id, runID, offset, follow, func(chunks []sandbox.OutputChunk) error {
		for _, ch := range chunks {
			if _, err := w.Write(enc.chunk(ch, true)); err != nil {
				return err
			}
		}
		return rc.Flush()
	})
	if err != nil || end.State == sandbox.RunRunning {
		return // fell behind, or the client or the agent is going: the body ends without the exit
	}
	_, _ = w.Write(enc.runExit(end, true))
}

// writeOutputErr answers an error of a run output read: 410 with the
// first kept offset for output no longer kept, else by class.
func writeOutputErr(w http.ResponseWriter, err error) {
	var gone *sandbox.OutputGoneError
	if errors.As(err, &gone) {
		w.Header().Set(OutputFirstOffsetHeader, strconv.FormatInt(gone.First, 10))
		httpapi.WriteError(w, http.StatusGone, err.Error())
		return
	}
	writeSandboxErr(w, err)
}

// runInfo is a run as the contract has it.
func runInfo(info sandbox.RunInfo) api.RunInfo {
	out := api.RunInfo{
		RunId: info.ID, SandboxId: info.SandboxID, Cmd: info.Cmd, Detached: info.Detached,
		State: api.RunState(info.State), StartedAt: info.StartedAt.Unix(),
		OutputFirstOffset: info.OutputFirst, OutputEndOffset: info.OutputEnd,
	}
	if out.Cmd == nil {
		out.Cmd = []string{}
	}
	if info.TTY {
		out.Tty = ptr(true)
	}
	if info.Pid > 0 {
		out.Pid = ptr(int32(info.Pid))
	}
	if !info.EndedAt.IsZero() {
		out.EndedAt = ptr(info.EndedAt.Unix())
	}
	if info.ExitCode != nil {
		out.ExitCode = ptr(int32(*info.ExitCode))
	}
	if info.Signal != "" {
		out.Signal = ptr(info.Signal)
	}
	if info.Error != "" {
		out.Error = ptr(info.Error)
	}
	if info.State == sandbox.RunRunning {
		out.Stdin = ptr(info.Stdin)
	}
	if len(info.Truncated) > 0 {
		cut := make([]api.RunInfoTruncated, len(info.Truncated))
		for i, s := range info.Truncated {
			cut[i] = api.RunInfoTruncated(s)
		}
		out.Truncated = &cut
	}
	return out
}

// signalMessages reads a run WebSocket's messages after the run request:
// each a SignalRequest, whose signal goes to sigs. A message that is not
// one closes the socket with 4400 (on the channel subprotocol, any binary
// message: a run has no stdin and no terminal to resize); any read error
// (the client went away) ends it. hangUp is called when it ends.
func signalMessages(ctx context.Context, c *websocket.Conn, sigs chan<- sandbox.Signal, hangUp func()) {
	defer hangUp()
	channels := wschannel.Spoken(c)
	for {
		typ, msg, err := c.Read(ctx)
		if err != nil {
			return
		}
		if channels && typ == websocket.MessageBinary {
			closeWith(c, http.StatusBadRequest, "binary message on a run: it has no stdin and no terminal; signals are JSON text messages")
			return
		}
		var req api.SignalRequest
		err = httpapi.DecodeJSONBytes(msg, &req)
		var sig sandbox.Signal
		if err == nil {
			sig, err = sandbox.ParseSignal(string(req.Signal))
		}
		if err != nil {
			closeWith(c, http.StatusBadRequest, "signal message: "+err.Error())
			return
		}
		select {
		case sigs <- sig:
		case <-ctx.Done():
			return
		}
	}
}
