package handlers

import (
	"fmt"
	"net/http"

	"github.com/arcbox/arcbox-agent/api"
	"github.com/arcbox/arcbox-agent/httpapi"
)

// GetInfo answers the guest system's facts.
func (a *API) GetInfo(w http.ResponseWriter, _ *http.Request) {
	info, err := a.cfg.SystemInfo()
	if err != nil {
		httpapi.WriteErr(w, fmt.Errorf("collect system info: %w", err))
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, api.SystemInfo{
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
		IpAddresses:     info.IPAddresses,
	})
}
