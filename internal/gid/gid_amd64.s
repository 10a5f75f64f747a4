//go:build !ringline_nogetg

#include "textflag.h"

// func Get() uintptr
//
// The current goroutine's g pointer, read from thread-local storage. Used
// only as an identity: never dereferenced.
TEXT ·Get(SB), NOSPLIT, $0-8
	MOVQ (TLS), AX
	MOVQ AX, ret+0(FP)
	RET
