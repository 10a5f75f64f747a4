package ringline

import "errors"

// epollBuilt reports whether the epoll backend is compiled in.
const epollBuilt = false

// newEpoll is replaced by the epoll backend (mio_fallback.go).
func newEpoll(bc backendConfig) (backend, error) {
	return nil, errors.New("ringline: the epoll backend is not built yet")
}
