//go:build linux && cgo

#include "cfault.h"

/* noinline and a volatile pointer that arrives as an argument: the store
 * stays a real store to address 0, in its own frame, at a known line. */
__attribute__((noinline)) void ringline_cfault_inner(volatile int *p)
{
	*p = 42; /* the fault */
}

void ringline_cfault_outer(void)
{
	ringline_cfault_inner((volatile int *)0);
}
