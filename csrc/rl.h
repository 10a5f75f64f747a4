/*
 * rl.h — the C side of ringline: ring setup, provided buffer rings, the
 * sparse fixed-file table, an opcode probe and the one batched entry point
 * the Go worker loop calls once per iteration.
 *
 * Go never hands this layer a Go pointer it keeps: staged ops, completion
 * arrays and buffers all live in memory Go mapped with mmap (outside the Go
 * heap), and the ring itself is malloc'd here.
 */
#ifndef RINGLINE_RL_H
#define RINGLINE_RL_H

#include <stdint.h>

/* Operation codes staged by Go. Kept small and stable: Go mirrors them. */
enum {
	RL_OP_NOP = 0,
	RL_OP_ACCEPT_MULTI = 1, /* fd = listener */
	RL_OP_RECV_MULTI = 2,   /* fd, buffer select from buf_group */
	RL_OP_SEND = 3,         /* fd, addr/len */
	RL_OP_SENDMSG = 4,      /* fd, addr = struct msghdr* */
	RL_OP_CANCEL = 5,       /* addr = target user_data */
	RL_OP_CLOSE = 6,        /* fd (plain) */
	RL_OP_CLOSE_DIRECT = 7, /* aux = fixed file index */
	RL_OP_FILES_UPDATE = 8, /* addr = int32 *fds, len = count, aux = offset */
	RL_OP_READ = 9,         /* fd, addr/len (eventfd wake) */
	RL_OP_SHUTDOWN = 10,    /* fd, aux = how */
	RL_OP_CONNECT = 11,     /* fd, addr = sockaddr*, len = addrlen */
	RL_OP_TIMEOUT = 12,     /* addr = struct __kernel_timespec* */
	RL_OP_SOCKET = 13,      /* fd = domain, len = type, aux = protocol */
	RL_OP_SEND_ZC = 14,     /* fd, addr/len, aux = IORING_SEND_ZC_* flags */
	RL_OP_SENDMSG_ZC = 15,  /* fd, addr = struct msghdr*, aux = IORING_SEND_ZC_* flags */
	/* Bounds the op before it (which carries RL_F_LINK) by the timespec
	 * at addr: on expiry that op is cancelled (-ECANCELED) and this one
	 * completes with -ETIME; otherwise this one completes -ECANCELED.
	 * 14..19 are left to the send ops added alongside it. */
	RL_OP_LINK_TIMEOUT = 20, /* addr = struct __kernel_timespec* */
};

/* Zero-copy sends (RL_OP_SEND_ZC, RL_OP_SENDMSG_ZC) complete twice when
 * the first completion carries RL_CQE_F_MORE: the send's result, then a
 * notification (RL_CQE_F_NOTIF, same user_data) once the kernel no longer
 * reads the memory. With RL_SEND_ZC_REPORT_USAGE in aux, the notification's
 * res has RL_NOTIF_USAGE_ZC_COPIED set when the kernel copied the bytes
 * after all (loopback, a device without scatter-gather). The kernel's
 * values, restated so Go need not include liburing. */
#define RL_CQE_F_MORE (1U << 1)
#define RL_CQE_F_NOTIF (1U << 3)
#define RL_SEND_ZC_REPORT_USAGE (1U << 3)
#define RL_NOTIF_USAGE_ZC_COPIED (1U << 31)

/* Op flags. */
enum {
	RL_F_FIXED = 1 << 0, /* fd is an index into the fixed-file table */
	RL_F_LINK = 1 << 1,  /* IOSQE_IO_LINK to the next op */
};

/* One staged operation: 32 bytes, mirrored by Go's sqOp. */
struct rl_op {
	uint8_t opcode;
	uint8_t flags;
	uint16_t buf_group;
	int32_t fd;
	uint64_t user_data;
	uint64_t addr;
	uint32_t len;
	uint32_t aux;
};

/* One completion copied out for Go: 16 bytes, mirrored by Go's cqEntry. */
struct rl_cqe {
	uint64_t user_data;
	int32_t res;
	uint32_t flags;
};

/* Setup flags actually accepted by the kernel (reported to Go). */
enum {
	RL_SETUP_SINGLE_ISSUER = 1 << 0,
	RL_SETUP_DEFER_TASKRUN = 1 << 1,
	RL_SETUP_COOP_TASKRUN = 1 << 2,
	RL_SETUP_CQSIZE = 1 << 3,
	RL_SETUP_TASKRUN_FLAG = 1 << 4,
};

/* The kernel's largest completion queue (IORING_MAX_CQ_ENTRIES); a larger
 * cq_entries is clamped to it. */
#define RL_MAX_CQ_ENTRIES 65536

struct rl_ring;

/* What the ring is and what the last rl_tick did, kept by the C layer in
 * the ring's own memory. Go reads it in place on the ring's thread (see
 * rl_ring_status), so learning it costs no extra cgo call. */
struct rl_status {
	uint64_t enters;           /* io_uring_enter calls made */
	uint64_t retries;          /* submissions retried after EINTR, EAGAIN or EBUSY */
	uint64_t overflow_flushes; /* enters made to move an overflowed CQ's backlog in */
	uint32_t taken;            /* ops of the last rl_tick placed in the SQ; the rest stay the caller's */
	uint32_t submitted;        /* SQEs the kernel consumed during the last rl_tick */
	uint32_t pending;          /* SQEs rl_tick_prep left in the SQ for the caller's enter */
	uint32_t setup_flags;      /* RL_SETUP_* the kernel accepted */
	uint32_t features;         /* IORING_FEAT_* the kernel reported */
	uint32_t cq_entries;       /* completion queue size the kernel granted */
	uint32_t cq_dropped;       /* completions the kernel dropped (CQ overflow without memory); never expected */
};

/* Sets up a ring with entries SQEs and cq_entries CQEs (0: the kernel's
 * default of twice entries; above RL_MAX_CQ_ENTRIES: clamped). It walks a
 * ladder of setup flags, most capable first:
 *   SINGLE_ISSUER|DEFER_TASKRUN|CQSIZE, SINGLE_ISSUER|DEFER_TASKRUN,
 *   COOP_TASKRUN|TASKRUN_FLAG|CQSIZE, COOP_TASKRUN|TASKRUN_FLAG,
 *   COOP_TASKRUN|CQSIZE, COOP_TASKRUN, CQSIZE, none
 * moving to the next rung only when the kernel answers EINVAL (a flag it
 * does not know); each mode is tried with CQSIZE and then without, so a
 * refused CQ size costs only that flag. want_flags masks which RL_SETUP_*
 * flags may be tried at all: a rung with a flag outside it is skipped as
 * if refused, and want_flags equal to one rung's flags lands exactly on
 * that rung (tests walk every rung this way). On success *out is set and
 * the return is 0; otherwise a negative errno. */
int rl_ring_init(struct rl_ring **out, unsigned entries, unsigned cq_entries, unsigned want_flags);
void rl_ring_free(struct rl_ring *r);
unsigned rl_ring_setup_flags(struct rl_ring *r);
int rl_ring_fd(struct rl_ring *r);

/* Registers a provided buffer ring of nbufs (power of two) buffers of
 * buf_size bytes each, carved from base (caller-owned, outside the Go heap),
 * as group bgid. Returns a pointer to the mmap'd io_uring_buf_ring (Go adds
 * returned buffers to it directly) or NULL with *err set. */
void *rl_buf_ring_setup(struct rl_ring *r, unsigned nbufs, unsigned bgid, void *base, unsigned buf_size, int *err);

/* Registers a sparse fixed-file table of n slots. Returns 0 or -errno. */
int rl_files_sparse(struct rl_ring *r, unsigned n);

/* The one entry point per loop iteration. It publishes buf_tail as the
 * provided buffer ring's tail with a release store (when buf_tail >= 0 and a
 * buffer ring is registered: Go wrote the entries before the call), preps
 * ops[0..nops) in SQ-sized chunks, submitting whenever the SQ is full and
 * never splitting a link chain (ops linked with RL_F_LINK go into one
 * submission; a chain longer than the SQ is refused with -EINVAL), and if
 * wait_nr > 0 waits (bounded by timeout_ns when >= 0) for that many
 * completions; then copies up to cap completions into out, entering again
 * to move an overflowed CQ's backlog in while out has room.
 *
 * With min_wait_usec > 0 (and a kernel with IORING_FEAT_MIN_TIMEOUT) the
 * wait for wait_nr completions lasts at most min_wait_usec, after which it
 * returns as soon as one is there: batching under load, little added
 * latency when idle. Never blocks when completions are already waiting.
 *
 * Errors from io_uring_enter are handled as the kernel means them: EINTR
 * on a submission is retried; EINTR during a wait (a signal: the Go
 * runtime's preemption, for one) waits again for the time left, as does a
 * wait that submitted and came back early with the CQ empty (the kernel
 * then returns the count submitted, not the EINTR); EAGAIN (no memory
 * for requests) and EBUSY (older kernels: CQ overflow backlog) mean the
 * kernel wants completions consumed first, so the tick reaps, waits at
 * most 1 ms for completions instead of blocking, and stops taking ops.
 * SQEs the kernel did not consume stay in the SQ and go with the next
 * submission; ops not taken (rl_status.taken < nops) are still the
 * caller's to pass again. Returns the number of completions copied, or a
 * negative errno for a failure that retrying cannot fix (then too,
 * rl_status.taken says which ops were taken). */
int rl_tick(struct rl_ring *r, const struct rl_op *ops, unsigned nops,
	    struct rl_cqe *out, unsigned cap, unsigned wait_nr, int64_t timeout_ns,
	    unsigned min_wait_usec, int32_t buf_tail);

/* rl_tick_prep is rl_tick for a caller that makes the wait itself, with
 * an io_uring_enter of its own (Go's held wait, which must not be a cgo
 * call): it places ops as rl_tick does, and then, when completions are
 * already there (or anything else needs the ring's attention: a refused
 * submission, an overflowed CQ, injected failures),
 * finishes exactly as rl_tick with wait_nr 0 does and returns what it
 * copied. Otherwise it enters nothing: the placed SQEs are made visible to
 * the kernel, rl_status.pending says how many the SQ holds, and it returns
 * 0; the caller's enter submits them (to_submit = pending) and waits, and
 * a later rl_tick copies the completions out. */
int rl_tick_prep(struct rl_ring *r, const struct rl_op *ops, unsigned nops,
		 struct rl_cqe *out, unsigned cap, int32_t buf_tail);

/* The CQ ring's head and tail, which Go reads in place (a held wait asks
 * whether completions came without another crossing). */
unsigned *rl_cq_khead(struct rl_ring *r);
unsigned *rl_cq_ktail(struct rl_ring *r);

/* Ops submitted by the last rl_tick. */
unsigned rl_last_submitted(struct rl_ring *r);

/* The ring's status block (stable for the ring's life). */
const struct rl_status *rl_ring_status(struct rl_ring *r);

/* Fault injection for tests, inert unless called: the next n rl_tick
 * calls into io_uring_enter that would submit SQEs fail with -err instead
 * of entering the kernel, as the kernel would fail them (nothing consumed,
 * no wait). Safe from any thread. Returns how many injected failures were
 * still pending before this call. */
unsigned rl_test_fail_submits(struct rl_ring *r, int err, unsigned n);

/* Whether the kernel honours min_wait_usec (IORING_FEAT_MIN_TIMEOUT). */
int rl_has_min_timeout(struct rl_ring *r);

/* Counters maintained by the C layer. */
uint64_t rl_ring_enters(struct rl_ring *r);
/* Where the enter counter lives (stable for the ring's life), so Go can
 * read it on the ring's thread without a cgo call. */
const uint64_t *rl_ring_enters_ptr(struct rl_ring *r);

/* Probe: fills ops_supported[i] = 1 for each IORING_OP_* (i < n) the kernel
 * supports. Returns 0 or -errno. */
int rl_probe_ops(unsigned char *ops_supported, unsigned n);

/* Kernel opcode numbers the Go side asks about in Probe. */
int rl_kernel_opcode(int which);

/* What rl_probe found. Every field is filled whatever happens; when the
 * ring could not be set up, setup_err says why and the rest stay zero. */
struct rl_probe_info {
	int setup_err;           /* 0, or -errno of io_uring_setup after the flag ladder */
	unsigned setup_flags;    /* RL_SETUP_* the kernel accepted */
	unsigned features;       /* IORING_FEAT_* the kernel reported */
	int buf_ring_err;        /* 0, or -errno registering a provided buffer ring */
	int recv_multishot;      /* 1 the kernel kept a multishot recv armed, 0 refused, <0 -errno of the test */
	int accept_multishot;    /* the same for multishot accept */
	int send_zc;             /* 1 when IORING_OP_SEND_ZC is supported */
	int sendmsg_zc;          /* 1 when IORING_OP_SENDMSG_ZC is supported */
	/* A real SEND_ZC with RL_SEND_ZC_REPORT_USAGE over a TCP loopback
	 * connection: zc_res is the first completion's res (bytes, or -errno:
	 * -EINVAL from kernels before 6.2, which lack usage reports), zc_notif
	 * 1 when a notification followed it, zc_copied 1 when the notification
	 * said the kernel copied (always, over loopback). zc_res is 0 and the
	 * others too when the check could not run (the setup's -errno in
	 * zc_setup_err then). */
	int zc_res;
	int zc_notif;
	int zc_copied;
	int zc_setup_err;
	int zc_probed;           /* 1 when the SEND_ZC check ran */
	unsigned char ops[256];  /* ops[i] = 1 when IORING_OP_* number i is supported */
};

/* rl_probe's options. */
#define RL_PROBE_SEND_ZC (1u << 0) /* also run the SEND_ZC check (zc_* fields) */

/* Probes what ringline needs from the kernel with a real ring (so a
 * seccomp filter or io_uring_disabled answers here, with its errno): the
 * setup ladder under want_flags with entries SQEs, the opcode table, a
 * provided buffer ring, and a multishot recv and a multishot accept on
 * AF_UNIX sockets, each checked by its first completion carrying F_MORE;
 * with RL_PROBE_SEND_ZC in options, a real SEND_ZC too. Returns
 * info->setup_err. */
int rl_probe(struct rl_probe_info *info, unsigned entries, unsigned want_flags, unsigned options);

#endif
