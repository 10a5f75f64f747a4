//go:build linux && cgo && !ringline_epoll

// The C layer lives in csrc/; cgo compiles only C files in the package
// directory, so this file pulls it in.
#include "csrc/rl.c"
