//go:build linux && cgo && !ringline_epoll

package ringline

import "fmt"

func newURing(bc backendConfig) (backend, error) {
	b, err := newURingBackend(bc)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// uringUsable checks that io_uring can be set up and offers the opcodes the
// backend needs.
func uringUsable(cfg *Config) error {
	ops, err := uringProbeOps()
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	for _, need := range []string{"ACCEPT", "RECV", "SEND", "SENDMSG", "ASYNC_CANCEL", "CLOSE", "READ"} {
		if !ops[need] {
			return fmt.Errorf("kernel lacks IORING_OP_%s", need)
		}
	}
	return nil
}
