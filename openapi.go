// Package arcboxagent holds what the whole agent shares at its root: the
// OpenAPI contract, embedded so the binary serves the spec it was built from.
package arcboxagent

import _ "embed"

// OpenAPI is openapi.yaml, the agent's HTTP contract.
//
//go:embed openapi.yaml
var OpenAPI []byte
