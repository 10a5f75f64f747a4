//go:build linux && cgo && !ringline_epoll

package main

// A crash inside ringline's C layer (or any C code) then prints C frames
// with function, file and line instead of bare addresses. It installs a
// process-wide traceback hook, so the library leaves this to programs.
// Build with `go build` (not `go run`, which drops the DWARF it reads).
import _ "github.com/ianlancetaylor/cgosymbolizer"
