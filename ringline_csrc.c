//go:build linux && cgo && !ringline_epoll

// The C layer lives in csrc/; cgo compiles only C files in the package
// directory, so this file pulls it in.
//
// Without liburing's headers the build stops here with one message saying
// what to do, instead of a cascade of errors from inside rl.c.
#if defined(__has_include)
#if !__has_include(<liburing.h>)
#error "ringline: <liburing.h> not found. The io_uring backend needs liburing 2.3 or later; choose one: (1) install your distribution's liburing (apt-get install liburing-dev, dnf install liburing-devel); (2) build the pinned liburing 2.9 and export the flags it prints: go run github.com/ringline-go/ringline/cmd/ringline-liburing; (3) build without io_uring (epoll only): CGO_ENABLED=0 or -tags ringline_epoll. See the README, 'Using ringline in your service'."
#define RINGLINE_NO_LIBURING 1
#endif
#endif

#ifndef RINGLINE_NO_LIBURING
#include "csrc/rl.c"
#endif
