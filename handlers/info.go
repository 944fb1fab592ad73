package handlers

import (
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// GetInfo answers the guest system's facts: those it could read, and in
// "errors" why the others could not be; and the VirtioFS shares mounted.
func (a *API) GetInfo(w http.ResponseWriter, r *http.Request) {
	info, err := a.cfg.SystemInfo()
	var errs *[]string
	if err != nil {
		a.log(r).Warn("some system facts could not be read", "err", err)
		var each []string
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				each = append(each, e.Error())
			}
		} else {
			each = []string{err.Error()}
		}
		errs = &each
	}
	httpapi.WriteJSON(w, http.StatusOK, api.SystemInfo{
		Errors:          errs,
		Shares:          a.shares(),
		KernelVersion:   info.KernelVersion,
		OsName:          info.OSName,
		OsVersion:       info.OSVersion,
		Arch:            info.Arch,
		Hostname:        info.Hostname,
		TotalMemory:     int64(info.TotalMemory),
		AvailableMemory: int64(info.AvailableMemory),
		CpuCount:        int32(info.CPUCount),
		LoadAverage:     info.LoadAverage[:],
		Uptime:          int64(info.Uptime.Seconds()),
		IpAddresses:     append([]string{}, info.IPAddresses...), // [] when none could be read, never null
	})
}

// shares lists the shares mounted: [] when none, never null.
func (a *API) shares() *[]api.Share {
	list := []api.Share{}
	if a.cfg.Shares != nil {
		list = append(list, a.cfg.Shares()...)
	}
	return &list
}
