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
};

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

struct rl_ring;

/* Sets up a ring with entries SQEs and cq_entries CQEs, trying
 * SINGLE_ISSUER|DEFER_TASKRUN, then COOP_TASKRUN, then plain; want_flags
 * masks which RL_SETUP_* flags may be tried at all (tests use it to force
 * the retry path). On success *out is set and the return is 0; otherwise a
 * negative errno. */
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

/* The one entry point per loop iteration: preps ops[0..nops), submits them,
 * and if wait_nr > 0 waits (bounded by timeout_ns when >= 0) for that many
 * completions; then copies up to cap completions into out. With
 * min_wait_usec > 0 (and a kernel with IORING_FEAT_MIN_TIMEOUT) the wait
 * for wait_nr completions lasts at most min_wait_usec, after which it
 * returns as soon as one is there: batching under load, little added
 * latency when idle. Returns the number of completions copied, or a
 * negative errno when submission itself failed. Never blocks when
 * completions are already waiting. */
int rl_tick(struct rl_ring *r, const struct rl_op *ops, unsigned nops,
	    struct rl_cqe *out, unsigned cap, unsigned wait_nr, int64_t timeout_ns,
	    unsigned min_wait_usec);

/* Ops submitted by the last rl_tick. */
unsigned rl_last_submitted(struct rl_ring *r);

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
	unsigned char ops[256];  /* ops[i] = 1 when IORING_OP_* number i is supported */
};

/* Probes what ringline needs from the kernel with a real ring (so a
 * seccomp filter or io_uring_disabled answers here, with its errno): the
 * setup ladder under want_flags with entries SQEs, the opcode table, a
 * provided buffer ring, and a multishot recv and a multishot accept on
 * AF_UNIX sockets, each checked by its first completion carrying F_MORE.
 * Returns info->setup_err. */
int rl_probe(struct rl_probe_info *info, unsigned entries, unsigned want_flags);

#endif
