package handlers

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// acceptEach calls f with each media range of r's Accept headers and its
// q-value (1 when absent), in order; a malformed range or q-value is
// passed over, as if absent.
func acceptEach(r *http.Request, f func(mediaType string, q float64)) {
	for _, h := range r.Header.Values("Accept") {
		for _, part := range strings.Split(h, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			q := 1.0
			if v, ok := params["q"]; ok {
				if q, err = strconv.ParseFloat(v, 64); err != nil {
					continue
				}
			}
			f(mt, q)
		}
	}
}

// acceptQ is the highest q-value at which r's Accept names mediaType
// itself; 0 when it does not.
func acceptQ(r *http.Request, mediaType string) float64 {
	best := 0.0
	acceptEach(r, func(mt string, q float64) {
		if mt == mediaType {
			best = max(best, q)
		}
	})
	return best
}
