/*
 * buildinfo.h — what the C layer was built against. Free of liburing so
 * that Go's cgo preamble can include it; compat.h defines the functions.
 */
#ifndef RINGLINE_BUILDINFO_H
#define RINGLINE_BUILDINFO_H

/* Features compiled out because the liburing built against lacks them. */
enum {
	RL_OUT_MIN_TIMEOUT = 1 << 0, /* batch waits: liburing < 2.8 */
};

/* The liburing version of the headers rl.c was compiled with, as
 * major * 100 + minor (203 for 2.3, 209 for 2.9). */
int rl_liburing_version(void);

/* RL_OUT_* bits: what this build of the C layer cannot do, whatever the
 * kernel offers. */
unsigned rl_compiled_out(void);

#endif
