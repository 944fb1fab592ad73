// Package api is generated from openapi.yaml: the types of the agent's
// HTTP/JSON contract, the chi server interface the agent implements, and a
// client for host programs. Run `make generate` after changing the spec.
package api

//go:generate go tool oapi-codegen -config server.cfg.yaml ../openapi.yaml
//go:generate go tool oapi-codegen -config client.cfg.yaml ../openapi.yaml
