//go:build !ringline_nogetg

#include "textflag.h"

// func Get() uintptr
//
// The current goroutine's g pointer, kept in the g register (R28). Used
// only as an identity: never dereferenced.
TEXT ·Get(SB), NOSPLIT, $0-8
	MOVD g, R0
	MOVD R0, ret+0(FP)
	RET
