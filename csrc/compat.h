/*
 * compat.h — lets rl.c build against every liburing from 2.3 (Debian 12's
 * liburing-dev) to 2.9 (the pinned build vendor_liburing.sh makes). rl.c
 * is written against 2.9; for an older liburing, what it lacks is either
 * implemented here on calls and structures 2.3 already has (the kernel ABI
 * of <linux/io_uring.h>, which every liburing ships a copy of) or compiled
 * out. rl_compiled_out() tells Go which, and Probe() reports it.
 *
 *   liburing 2.3: provided buffer ring setup/teardown implemented here;
 *                 min-timeout batch waits compiled out.
 *   2.4 to 2.7:   min-timeout batch waits compiled out.
 *   2.8 and later: nothing to do.
 *   Before the 6.2 kernel headers (liburing 2.3): the zero-copy usage
 *   report's two constants, defined here.
 *
 * Included once, by rl.c, after <liburing.h>.
 */
#ifndef RINGLINE_COMPAT_H
#define RINGLINE_COMPAT_H

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <liburing.h>

#include "buildinfo.h"

/* 2.4 and later say their version (liburing/io_uring_version.h); 2.3 does
 * not, but is the first whose headers know IORING_SETUP_DEFER_TASKRUN. */
#if defined(IO_URING_VERSION_MAJOR) && defined(IO_URING_VERSION_MINOR)
#define RL_LIBURING_VERSION (IO_URING_VERSION_MAJOR * 100 + IO_URING_VERSION_MINOR)
#elif defined(IORING_SETUP_DEFER_TASKRUN)
#define RL_LIBURING_VERSION 203
#else
#error "ringline needs liburing 2.3 or later, and the <liburing.h> found is older. Build with the pinned liburing (go run github.com/ringline-go/ringline/cmd/ringline-liburing), or without cgo (CGO_ENABLED=0 or -tags ringline_epoll): see the README, 'Using ringline in your service'."
#endif

#if RL_LIBURING_VERSION < 204
/*
 * io_uring_setup_buf_ring()/io_uring_free_buf_ring() are new in 2.4. The
 * same with 2.3's io_uring_register_buf_ring(): the ring of
 * struct io_uring_buf entries lives in page-aligned anonymous memory that
 * the kernel reads; its tail starts at 0. Same names and signatures as
 * 2.4's, so rl.c calls them unchanged.
 */
static inline struct io_uring_buf_ring *io_uring_setup_buf_ring(struct io_uring *ring, unsigned int nentries,
								 int bgid, unsigned int flags, int *ret)
{
	size_t len = (size_t)nentries * sizeof(struct io_uring_buf);
	struct io_uring_buf_reg reg;
	struct io_uring_buf_ring *br;
	int rc;

	br = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (br == MAP_FAILED) {
		*ret = -errno;
		return NULL;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)(uintptr_t)br;
	reg.ring_entries = nentries;
	reg.bgid = (unsigned short)bgid;
	rc = io_uring_register_buf_ring(ring, &reg, flags);
	if (rc) {
		munmap(br, len);
		*ret = rc;
		return NULL;
	}
	io_uring_buf_ring_init(br);
	return br;
}

static inline int io_uring_free_buf_ring(struct io_uring *ring, struct io_uring_buf_ring *br,
					 unsigned int nentries, int bgid)
{
	int rc = io_uring_unregister_buf_ring(ring, bgid);

	if (rc)
		return rc;
	munmap(br, (size_t)nentries * sizeof(struct io_uring_buf));
	return 0;
}
#endif

#if RL_LIBURING_VERSION < 208
/*
 * Batch waits (Config.BatchWait) ride on io_uring_submit_and_wait_min_timeout
 * and IORING_FEAT_MIN_TIMEOUT, both new in 2.8: compiled out. The feature
 * bit is defined as 0 here, so rl.c's `features & IORING_FEAT_MIN_TIMEOUT`
 * is false whatever the kernel offers: rl_has_min_timeout() answers 0 (Go
 * then never asks for a batch wait) and the stub below is never reached.
 */
#undef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT 0u
static inline int io_uring_submit_and_wait_min_timeout(struct io_uring *ring, struct io_uring_cqe **cqe_ptr,
						       unsigned wait_nr, struct __kernel_timespec *ts,
						       unsigned min_wait_usec, sigset_t *sigmask)
{
	(void)ring, (void)cqe_ptr, (void)wait_nr, (void)ts, (void)min_wait_usec, (void)sigmask;
	return -EOPNOTSUPP;
}
#define RL_COMPILED_OUT RL_OUT_MIN_TIMEOUT
#else
#define RL_COMPILED_OUT 0u
#endif

/*
 * Zero-copy send usage reports are kernel 6.2 ABI; liburing 2.3's copy of
 * <linux/io_uring.h> predates them (its io_uring_prep_send_zc and
 * io_uring_prep_sendmsg_zc are there). The values are the kernel's.
 */
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
_Static_assert(RL_SEND_ZC_REPORT_USAGE == IORING_SEND_ZC_REPORT_USAGE, "rl.h restates the kernel's value");
_Static_assert(RL_NOTIF_USAGE_ZC_COPIED == IORING_NOTIF_USAGE_ZC_COPIED, "rl.h restates the kernel's value");
_Static_assert(RL_CQE_F_MORE == IORING_CQE_F_MORE, "rl.h restates the kernel's value");
_Static_assert(RL_CQE_F_NOTIF == IORING_CQE_F_NOTIF, "rl.h restates the kernel's value");

/* Defined here rather than in rl.c: compat.h is included once, by rl.c. */
int rl_liburing_version(void) { return RL_LIBURING_VERSION; }
unsigned rl_compiled_out(void) { return RL_COMPILED_OUT; }

#endif
