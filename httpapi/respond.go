package httpapi

import (
	"encoding/json"
	"net/http"
)

// MaxBodyBytes is the largest request body the agent reads.
const MaxBodyBytes = 1 << 20

// Error is the one JSON error shape of the API.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// WriteJSON writes v as the JSON body of a response with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// WriteError writes the JSON error body for status with message.
func WriteError(w http.ResponseWriter, status int, message string) {
	body, _ := json.Marshal(Error{Code: status, Message: message})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
