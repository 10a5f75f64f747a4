package ringline

import "fmt"

// selectBackend resolves Config.Backend to the backend the workers use.
// IOUring and Auto probe with a real ring (uringUsable), so a seccomp
// filter that denies io_uring_setup, a disabled io_uring or a kernel that
// lacks a feature is found here: IOUring then fails with the reason
// (wrapping ErrIOUringUnavailable and the errno), Auto logs it through
// cfg.Logger and runs on epoll.
func selectBackend(cfg *Config) (Backend, error) {
	switch cfg.Backend {
	case Epoll:
		return Epoll, nil
	case IOUring:
		if err := uringUsable(cfg); err != nil {
			return 0, fmt.Errorf("%w (Config.Backend is IOUring; Auto would run on epoll)", err)
		}
		return IOUring, nil
	case Auto:
		if err := uringUsable(cfg); err != nil {
			if uringCompiled {
				cfg.Logger.Warn("ringline: io_uring cannot be used; falling back to epoll", "reason", err.Error())
			} else {
				cfg.Logger.Info("ringline: running on epoll", "reason", err.Error())
			}
			return Epoll, nil
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
		batchWait:    cfg.BatchWait,
		hold:         max(cfg.HoldWait, 0),
	}
	switch kind {
	case IOUring:
		return newURing(bc)
	case Epoll:
		return newEpoll(bc)
	}
	return nil, fmt.Errorf("ringline: unknown backend %v", kind)
}
