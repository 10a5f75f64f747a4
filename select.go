package ringline

import "fmt"

// selectBackend resolves Config.Backend to the backend the workers use.
func selectBackend(cfg *Config) (Backend, error) {
	switch cfg.Backend {
	case Epoll:
		return Epoll, nil
	case IOUring, Auto:
		if err := uringUsable(cfg); err != nil {
			return 0, fmt.Errorf("ringline: io_uring backend unavailable: %w", err)
		}
		return IOUring, nil
	}
	return 0, fmt.Errorf("ringline: unknown backend %v", cfg.Backend)
}

func newBackend(kind Backend, cfg *Config) (backend, error) {
	bc := backendConfig{
		ringEntries:  uint32(cfg.RingEntries),
		bufCount:     uint32(cfg.BufferCount),
		bufSize:      uint32(cfg.BufferSize),
		maxConns:     uint32(cfg.MaxConnections),
		ringFlagMask: cfg.ringFlagMask,
		plainFDs:     cfg.plainFDs,
	}
	switch kind {
	case IOUring:
		return newURing(bc)
	case Epoll:
		return newEpoll(bc)
	}
	return nil, fmt.Errorf("ringline: unknown backend %v", kind)
}
