//go:build linux && cgo

// Package cfault holds a C function that faults, for the test that shows a
// crash inside C reads as C frames with file and line once
// github.com/ianlancetaylor/cgosymbolizer is linked in (symbolizer_test.go
// in the root package). cgo is not allowed in _test.go files, hence this
// package; only that test imports it.
package cfault

/*
#cgo CFLAGS: -g -O0
#include "cfault.h"
*/
import "C"

// Crash calls into C, which writes through a NULL pointer two C frames
// deep (cfault.c): the process dies with SIGSEGV.
func Crash() { C.ringline_cfault_outer() }
