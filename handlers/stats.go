package handlers

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
	"github.com/arcbox/arcbox-agent/sandbox"
	"github.com/arcbox/arcbox-agent/sysinfo"
)

// intervalRule is the contract's form of ?interval=: a whole number and a
// unit, from 100ms to 1h, so that what the pattern takes is in range.
var intervalRule = &rule{pattern: `^(?:(?:[1-9][0-9]{2,5}|[12][0-9]{6}|3[0-5][0-9]{5}|3600000)ms|(?:[1-9][0-9]{0,2}|[12][0-9]{3}|3[0-5][0-9]{2}|3600)s|(?:[1-9]|[1-5][0-9]|60)m|1h)$`,
	what: "a duration from 100ms to 1h: a whole number and a unit, ms, s, m or h (500ms, 1s, 5m)"}

// statsInterval is ?interval= as a duration, 0 when absent; it answers
// 400 and returns false when it is malformed.
func statsInterval(w http.ResponseWriter, v *string) (time.Duration, bool) {
	if v == nil {
		return 0, true
	}
	if err := intervalRule.check(`query parameter "interval"`, *v); err != nil {
		httpapi.WriteErr(w, err)
		return 0, false
	}
	d, err := time.ParseDuration(*v)
	if err != nil { // the pattern admits only what parses
		httpapi.WriteErr(w, badRequest(`query parameter "interval": %v`, err))
		return 0, false
	}
	return d, true
}

// GetSandboxStats answers a sandbox's resource use, or streams it every
// ?interval= until the sandbox stops.
func (a *API) GetSandboxStats(w http.ResponseWriter, r *http.Request, id api.SandboxID, params api.GetSandboxStatsParams) {
	if !checkPathID(w, id) {
		return
	}
	interval, ok := statsInterval(w, params.Interval)
	if !ok {
		return
	}
	m := a.manager(w, r)
	if m == nil {
		return
	}
	a.serveStats(w, r, interval, writeSandboxErr, func(ctx context.Context) (any, error) {
		st, err := m.Stats(ctx, id)
		if err != nil {
			return nil, err
		}
		return sandboxStatsJSON(id, st), nil
	})
}

// GetGuestStats answers the guest's resource use, or streams it every
// ?interval=.
func (a *API) GetGuestStats(w http.ResponseWriter, r *http.Request, params api.GetGuestStatsParams) {
	interval, ok := statsInterval(w, params.Interval)
	if !ok {
		return
	}
	if a.cfg.GuestStats == nil {
		httpapi.WriteError(w, http.StatusServiceUnavailable, "the guest's stats are unavailable: not configured")
		return
	}
	a.serveStats(w, r, interval, httpapi.WriteErr, func(context.Context) (any, error) {
		st, err := a.cfg.GuestStats()
		if err != nil {
			return nil, fmt.Errorf("read the guest's stats: %w", err)
		}
		return guestStatsJSON(st), nil
	})
}

// serveStats answers what read reads: once as JSON without an interval;
// else as NDJSON, at once and then every interval, until the client goes,
// the agent shuts down, or read fails (a sandbox stopped, say), which ends
// the body. The first read's error is answered by writeErr, with its status.
func (a *API) serveStats(w http.ResponseWriter, r *http.Request, interval time.Duration, writeErr func(http.ResponseWriter, error), read func(context.Context) (any, error)) {
	v, err := read(r.Context())
	if err != nil {
		writeErr(w, err)
		return
	}
	if interval == 0 {
		httpapi.WriteJSON(w, http.StatusOK, v)
		return
	}
	ctx, cancel := a.streamContext(r)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		line, err := json.Marshal(v)
		if err != nil {
			a.log(r).Error("stats stream: encode", "err", err)
			return
		}
		if _, err := w.Write(append(line, '\n')); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if v, err = read(ctx); err != nil {
			a.log(r).Info("stats stream ended", "err", err)
			return
		}
	}
}

// counter is a kernel counter in the API's int64; the parsers refuse
// larger ones, so the bound is never reached.
func counter(v uint64) int64 { return int64(min(v, math.MaxInt64)) }

func optCounter(v *uint64) *int64 {
	if v == nil {
		return nil
	}
	c := counter(*v)
	return &c
}

func sandboxStatsJSON(id string, st sandbox.Stats) api.SandboxStats {
	out := api.SandboxStats{
		SandboxId: id,
		Timestamp: st.Time.UnixNano(),
		Cpu: api.SandboxCPUStats{UsageUsec: counter(st.CPU.UsageUsec), UserUsec: counter(st.CPU.UserUsec),
			SystemUsec: counter(st.CPU.SystemUsec)},
		Memory: api.SandboxMemoryStats{CurrentBytes: counter(st.Memory.Current), PeakBytes: optCounter(st.Memory.Peak),
			LimitBytes: optCounter(st.Memory.Limit)},
		Pids:     api.SandboxPidsStats{Current: counter(st.Pids.Current), Limit: optCounter(st.Pids.Limit)},
		Pressure: pressureJSON(st.Pressure),
	}
	if t := st.CPU.Throttling; t != nil {
		out.Cpu.Throttling = &api.SandboxCPUThrottling{Periods: counter(t.Periods),
			ThrottledPeriods: counter(t.ThrottledPeriods), ThrottledUsec: counter(t.ThrottledUsec)}
	}
	if io := st.IO; io != nil {
		out.Io = &api.SandboxIOStats{ReadBytes: counter(io.ReadBytes), WriteBytes: counter(io.WriteBytes),
			ReadOps: counter(io.ReadOps), WriteOps: counter(io.WriteOps)}
	}
	return out
}

func guestStatsJSON(st sysinfo.Stats) api.GuestStats {
	m := st.Memory
	out := api.GuestStats{
		Timestamp: st.Time.UnixNano(),
		Memory: api.GuestMemoryStats{TotalBytes: counter(m.Total), AvailableBytes: counter(m.Available),
			UsedBytes: counter(m.Used), SwapTotalBytes: counter(m.SwapTotal), SwapFreeBytes: counter(m.SwapFree)},
		LoadAverage: st.LoadAverage[:],
		Pressure:    pressureJSON(st.Pressure),
	}
	if v := st.DataVolume; v != nil {
		out.DataVolume = &api.DataVolumeStats{MountPoint: v.MountPoint, TotalBytes: counter(v.Total),
			UsedBytes: counter(v.Used), FreeBytes: counter(v.Free)}
	}
	return out
}

func pressureJSON(p sysinfo.PressureSet) api.PressureStats {
	one := func(p *sysinfo.Pressure) *api.Pressure {
		if p == nil {
			return nil
		}
		line := func(l sysinfo.PressureLine) api.PressureAverages {
			return api.PressureAverages{Avg10: l.Avg10, Avg60: l.Avg60, Avg300: l.Avg300, TotalUsec: counter(l.TotalUsec)}
		}
		out := &api.Pressure{Some: line(p.Some)}
		if p.Full != nil {
			full := line(*p.Full)
			out.Full = &full
		}
		return out
	}
	return api.PressureStats{Cpu: one(p.CPU), Memory: one(p.Memory), Io: one(p.IO)}
}
