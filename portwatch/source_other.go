//go:build !linux

package portwatch

import (
	"errors"
	"log/slog"
)

// newKernelSource fails off Linux: sock_diag and network namespaces are
// Linux's.
func newKernelSource(Config, *slog.Logger) (source, error) {
	return nil, errors.New("portwatch needs Linux")
}
