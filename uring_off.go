//go:build !(linux && cgo && !ringline_epoll)

package ringline

// This build has no io_uring backend: it was made with CGO_ENABLED=0 or
// -tags ringline_epoll. Auto runs on epoll; IOUring fails Launch.

// uringCompiled reports whether the io_uring backend is in this build.
const uringCompiled = false

func newURing(bc backendConfig) (backend, error) {
	kp := probeKernel(bc.ringEntries, bc.ringFlagMask, false)
	return nil, kp.usable()
}

// probeKernel reports that io_uring is not compiled in.
func probeKernel(entries, mask uint32, zc bool) kernelProbe { return kernelProbe{} }
