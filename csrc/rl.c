/*
 * rl.c — see rl.h. Plain liburing; nothing here allocates per operation.
 */
#include "rl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>
#include <liburing.h>
#include "compat.h" /* what an older liburing lacks */

struct rl_ring {
	struct io_uring ring;
	struct rl_status st;
	struct io_uring_buf_ring *br;
	unsigned br_entries;
	unsigned bgid;
	/* rl_test_fail_submits: pending injected failures and their errno. */
	unsigned fail_n;
	int fail_err;
};

int rl_ring_init(struct rl_ring **out, unsigned entries, unsigned cq_entries, unsigned want_flags)
{
	/* Most capable first; each rung drops what an older kernel refuses,
	 * one flag at a time where the flags are independent: CQSIZE goes
	 * before the task-run mode does. */
	static const unsigned ladder[] = {
		RL_SETUP_SINGLE_ISSUER | RL_SETUP_DEFER_TASKRUN | RL_SETUP_CQSIZE,
		RL_SETUP_SINGLE_ISSUER | RL_SETUP_DEFER_TASKRUN,
		RL_SETUP_COOP_TASKRUN | RL_SETUP_TASKRUN_FLAG | RL_SETUP_CQSIZE,
		RL_SETUP_COOP_TASKRUN | RL_SETUP_TASKRUN_FLAG,
		RL_SETUP_COOP_TASKRUN | RL_SETUP_CQSIZE,
		RL_SETUP_COOP_TASKRUN,
		RL_SETUP_CQSIZE,
		0,
	};
	struct rl_ring *r = calloc(1, sizeof(*r));
	int ret = -EINVAL;
	unsigned i, last = (unsigned)-1;

	if (!r)
		return -ENOMEM;
	/* Above the kernel's maximum every rung with CQSIZE would fail. */
	if (cq_entries > RL_MAX_CQ_ENTRIES)
		cq_entries = RL_MAX_CQ_ENTRIES;
	for (i = 0; i < sizeof(ladder) / sizeof(ladder[0]); i++) {
		unsigned f = ladder[i];
		struct io_uring_params p;

		/* A flag outside want_flags is treated as refused (EINVAL), so
		 * tests can walk the same retry path an older kernel takes. */
		if (f & ~want_flags) {
			ret = -EINVAL;
			continue;
		}
		/* The kernel refuses a CQ smaller than the SQ. */
		if (!cq_entries || cq_entries < entries)
			f &= ~RL_SETUP_CQSIZE;
		if (f == last)
			continue;
		last = f;
		memset(&p, 0, sizeof(p));
		if (f & RL_SETUP_SINGLE_ISSUER)
			p.flags |= IORING_SETUP_SINGLE_ISSUER;
		if (f & RL_SETUP_DEFER_TASKRUN)
			p.flags |= IORING_SETUP_DEFER_TASKRUN;
		if (f & RL_SETUP_COOP_TASKRUN)
			p.flags |= IORING_SETUP_COOP_TASKRUN;
		if (f & RL_SETUP_TASKRUN_FLAG)
			p.flags |= IORING_SETUP_TASKRUN_FLAG;
		if (f & RL_SETUP_CQSIZE) {
			p.flags |= IORING_SETUP_CQSIZE;
			p.cq_entries = cq_entries;
		}
		ret = io_uring_queue_init_params(entries, &r->ring, &p);
		if (ret == 0) {
			r->st.setup_flags = f;
			r->st.features = p.features;
			r->st.cq_entries = p.cq_entries;
			*out = r;
			return 0;
		}
		/* Only a refused flag is worth retrying; anything else (EPERM
		 * from seccomp, ENOMEM, ENOSYS) will not change. */
		if (ret != -EINVAL)
			break;
	}
	free(r);
	return ret;
}

void rl_ring_free(struct rl_ring *r)
{
	if (!r)
		return;
	/* SQEs a refused submission left in the SQ (closes among them) still
	 * go to the kernel before the ring is torn down. */
	if (io_uring_sq_ready(&r->ring))
		io_uring_submit(&r->ring);
	if (r->br)
		io_uring_free_buf_ring(&r->ring, r->br, r->br_entries, r->bgid);
	io_uring_queue_exit(&r->ring);
	free(r);
}

unsigned rl_ring_setup_flags(struct rl_ring *r) { return r->st.setup_flags; }
int rl_ring_fd(struct rl_ring *r) { return r->ring.ring_fd; }
uint64_t rl_ring_enters(struct rl_ring *r) { return r->st.enters; }
const uint64_t *rl_ring_enters_ptr(struct rl_ring *r) { return &r->st.enters; }
const struct rl_status *rl_ring_status(struct rl_ring *r) { return &r->st; }

void *rl_buf_ring_setup(struct rl_ring *r, unsigned nbufs, unsigned bgid, void *base, unsigned buf_size, int *err)
{
	struct io_uring_buf_ring *br;
	unsigned i;
	int mask;

	*err = 0;
	br = io_uring_setup_buf_ring(&r->ring, nbufs, bgid, 0, err);
	if (!br)
		return NULL;
	mask = io_uring_buf_ring_mask(nbufs);
	for (i = 0; i < nbufs; i++)
		io_uring_buf_ring_add(br, (char *)base + (size_t)i * buf_size, buf_size, i, mask, i);
	io_uring_buf_ring_advance(br, nbufs);
	r->br = br;
	r->br_entries = nbufs;
	r->bgid = bgid;
	return br;
}

int rl_files_sparse(struct rl_ring *r, unsigned n)
{
	return io_uring_register_files_sparse(&r->ring, n);
}

static void prep_one(struct io_uring_sqe *sqe, const struct rl_op *op)
{
	switch (op->opcode) {
	case RL_OP_ACCEPT_MULTI:
		io_uring_prep_multishot_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC);
		break;
	case RL_OP_RECV_MULTI:
		io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
		sqe->flags |= IOSQE_BUFFER_SELECT;
		sqe->buf_group = op->buf_group;
		break;
	case RL_OP_SEND:
		io_uring_prep_send(sqe, op->fd, (void *)(uintptr_t)op->addr, op->len, MSG_NOSIGNAL);
		break;
	case RL_OP_SENDMSG:
		io_uring_prep_sendmsg(sqe, op->fd, (const struct msghdr *)(uintptr_t)op->addr, MSG_NOSIGNAL);
		break;
	case RL_OP_CANCEL:
		io_uring_prep_cancel64(sqe, op->addr, 0);
		break;
	case RL_OP_CLOSE:
		io_uring_prep_close(sqe, op->fd);
		break;
	case RL_OP_CLOSE_DIRECT:
		io_uring_prep_close_direct(sqe, op->aux);
		break;
	case RL_OP_FILES_UPDATE:
		io_uring_prep_files_update(sqe, (int *)(uintptr_t)op->addr, op->len, (int)op->aux);
		break;
	case RL_OP_READ:
		io_uring_prep_read(sqe, op->fd, (void *)(uintptr_t)op->addr, op->len, 0);
		break;
	case RL_OP_SHUTDOWN:
		io_uring_prep_shutdown(sqe, op->fd, (int)op->aux);
		break;
	case RL_OP_CONNECT:
		io_uring_prep_connect(sqe, op->fd, (const struct sockaddr *)(uintptr_t)op->addr, op->len);
		break;
	case RL_OP_TIMEOUT:
		io_uring_prep_timeout(sqe, (struct __kernel_timespec *)(uintptr_t)op->addr, 0, 0);
		break;
	case RL_OP_SOCKET:
		io_uring_prep_socket(sqe, op->fd, (int)op->len, (int)op->aux, 0);
		break;
	case RL_OP_SEND_ZC:
		io_uring_prep_send_zc(sqe, op->fd, (void *)(uintptr_t)op->addr, op->len, MSG_NOSIGNAL, op->aux);
		break;
	case RL_OP_SENDMSG_ZC:
		io_uring_prep_sendmsg_zc(sqe, op->fd, (const struct msghdr *)(uintptr_t)op->addr, MSG_NOSIGNAL);
		sqe->ioprio = (__u16)op->aux; /* the zero-copy flags, as io_uring_prep_send_zc sets them */
		break;
	case RL_OP_LINK_TIMEOUT:
		/* The kernel copies the timespec at submission. */
		io_uring_prep_link_timeout(sqe, (struct __kernel_timespec *)(uintptr_t)op->addr, 0);
		break;
	default:
		io_uring_prep_nop(sqe);
		break;
	}
	if (op->flags & RL_F_FIXED)
		sqe->flags |= IOSQE_FIXED_FILE;
	if (op->flags & RL_F_LINK)
		sqe->flags |= IOSQE_IO_LINK;
	io_uring_sqe_set_data64(sqe, op->user_data);
}

static unsigned reap(struct rl_ring *r, struct rl_cqe *out, unsigned cap)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	io_uring_for_each_cqe(&r->ring, head, cqe) {
		if (n == cap)
			break;
		out[n].user_data = cqe->user_data;
		out[n].res = cqe->res;
		out[n].flags = cqe->flags;
		n++;
	}
	io_uring_cq_advance(&r->ring, n);
	return n;
}

/* Copies completions out. A full CQ spills into the kernel's overflow list
 * (IORING_SQ_CQ_OVERFLOW; nothing is lost while the kernel can allocate),
 * which an enter with GETEVENTS moves into the space reaping freed: done
 * while out has room, so even a tiny CQ hands over a full batch per tick. */
static unsigned reap_all(struct rl_ring *r, struct rl_cqe *out, unsigned cap)
{
	unsigned n = reap(r, out, cap), m;

	while (n < cap && (IO_URING_READ_ONCE(*r->ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW)) {
		r->st.enters++;
		r->st.overflow_flushes++;
		if (io_uring_get_events(&r->ring) < 0)
			break;
		m = reap(r, out + n, cap - n);
		if (!m)
			break;
		n += m;
	}
	r->st.cq_dropped = IO_URING_READ_ONCE(*r->ring.cq.koverflow);
	return n;
}

/* rl_test_fail_submits' hook: -err while injected failures are pending and
 * the SQ holds something to submit, else 0. */
static int injected(struct rl_ring *r)
{
	unsigned n = __atomic_load_n(&r->fail_n, __ATOMIC_ACQUIRE);

	while (n && io_uring_sq_ready(&r->ring)) {
		if (__atomic_compare_exchange_n(&r->fail_n, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
			return -__atomic_load_n(&r->fail_err, __ATOMIC_RELAXED);
	}
	return 0;
}

/* Whether injected failures are pending (rl_tick_prep then takes the
 * path that meets them). */
static int injected_pending(struct rl_ring *r) { return __atomic_load_n(&r->fail_n, __ATOMIC_ACQUIRE) != 0; }

unsigned rl_test_fail_submits(struct rl_ring *r, int err, unsigned n)
{
	__atomic_store_n(&r->fail_err, err, __ATOMIC_RELAXED);
	return __atomic_exchange_n(&r->fail_n, n, __ATOMIC_ACQ_REL);
}

static int64_t mono_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* EAGAIN: no memory for requests; EBUSY: a CQ overflow backlog on kernels
 * that refuse submissions then. Either way the kernel consumed nothing and
 * wants completions consumed before it takes more. */
static int refusal(int ret) { return ret == -EAGAIN || ret == -EBUSY; }

/* How long a tick whose submission was refused waits for completions
 * before handing back to the caller, who retries on its next tick. */
#define RL_RETRY_NS 1000000LL

/* Submits what the SQ holds without waiting (entering with GETEVENTS when
 * getevents is set, or when the CQ has overflowed); EINTR is retried.
 * Returns the SQEs consumed or -errno. */
static int submit_sq(struct rl_ring *r, int getevents)
{
	int ret;

	for (;;) {
		ret = injected(r);
		if (!ret) {
			r->st.enters++;
			ret = getevents ? io_uring_submit_and_get_events(&r->ring) : io_uring_submit(&r->ring);
		}
		if (ret != -EINTR)
			break;
		r->st.retries++;
	}
	if (ret > 0)
		r->st.submitted += ret;
	return ret;
}

/* place_ops is rl_tick's first half: it publishes the buffer ring's tail
 * and places ops in the SQ (submitting when the SQ fills). Returns 0, 1
 * when the kernel refused a submission for now (the ops not placed stay
 * the caller's), or a negative errno. */
static int place_ops(struct rl_ring *r, const struct rl_op *ops, unsigned nops, int32_t buf_tail)
{
	struct io_uring *ring = &r->ring;
	unsigned i, taken = 0;
	int ret;

	r->st.taken = 0;
	r->st.submitted = 0;
	r->st.pending = 0;
	/* Go wrote the returned buffers' entries before this call; the
	 * release store orders them before the tail the kernel reads. */
	if (buf_tail >= 0 && r->br)
		io_uring_smp_store_release(&r->br->tail, (uint16_t)buf_tail);

	while (taken < nops) {
		unsigned chain = 1;

		while (taken + chain < nops && (ops[taken + chain - 1].flags & RL_F_LINK))
			chain++;
		if (chain > ring->sq.ring_entries)
			return -EINVAL;
		if (io_uring_sq_space_left(ring) < chain) {
			/* SQ full: push it and keep going. A link chain goes
			 * into one submission, never split across two. */
			ret = submit_sq(r, 0);
			if (ret < 0 && !refusal(ret))
				return ret;
			if (ret <= 0 && io_uring_sq_space_left(ring) < chain)
				return 1; /* refused: the rest stays the caller's */
			continue;
		}
		for (i = 0; i < chain; i++)
			prep_one(io_uring_get_sqe(ring), &ops[taken + i]);
		taken += chain;
		r->st.taken = taken;
	}
	return 0;
}

/* finish_tick is rl_tick's second half, after place_ops. */
static int finish_tick(struct rl_ring *r, struct rl_cqe *out, unsigned cap, unsigned wait_nr,
		       int64_t timeout_ns, unsigned min_wait_usec, int refused)
{
	struct io_uring *ring = &r->ring;
	int ret;

	if (refused) {
		/* Nothing to submit now: consume completions instead. */
	} else if (io_uring_cq_ready(ring) > 0) {
		/* Completions are already waiting: never block, and enter only
		 * to push new submissions. */
		if (io_uring_sq_ready(ring)) {
			ret = submit_sq(r, 0);
			if (ret < 0 && !refusal(ret))
				return ret;
			refused = ret < 0;
		}
	} else if (wait_nr > 0) {
		struct io_uring_cqe *cqe = NULL;
		struct __kernel_timespec ts, *tsp = NULL;
		unsigned submitted = 0;
		int64_t end = 0;

		if (timeout_ns > 0) { /* only a wait that can block reads the clock */
			int64_t now = mono_ns();

			end = timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
		}

		for (;;) {
			if (timeout_ns >= 0) {
				ts.tv_sec = timeout_ns / 1000000000LL;
				ts.tv_nsec = timeout_ns % 1000000000LL;
				tsp = &ts;
			}
			ret = injected(r);
			if (ret)
				goto waited;
			r->st.enters++;
			if (min_wait_usec && (ring->features & IORING_FEAT_MIN_TIMEOUT)) {
				/* The batch wait needs a timeout to ride on. */
				if (!tsp) {
					ts.tv_sec = 3600;
					ts.tv_nsec = 0;
					tsp = &ts;
				}
				ret = io_uring_submit_and_wait_min_timeout(ring, &cqe, wait_nr, tsp, min_wait_usec, NULL);
			} else {
				ret = io_uring_submit_and_wait_timeout(ring, &cqe, 1, tsp, NULL);
			}
waited:
			if (ret > 0)
				submitted += ret;
			/* A signal during the wait (the kernel ends the wait
			 * with EINTR whatever SA_RESTART says, and the Go
			 * runtime signals threads to preempt goroutines) is
			 * none of the things the caller waits for: wait again
			 * for the time left, so that a stream of signals
			 * neither ends the wait early nor stretches it. An
			 * enter that submitted returns the count submitted
			 * instead of how its wait ended: with the CQ empty, it
			 * ran out or a signal ended it, which the time left
			 * tells apart. */
			if (ret != -EINTR && (ret <= 0 || io_uring_cq_ready(ring) > 0))
				break;
			if (timeout_ns > 0 && (timeout_ns = end - mono_ns()) < 0)
				timeout_ns = 0;
			if (io_uring_sq_ready(ring))
				r->st.retries++; /* the submission too */
			else if (timeout_ns == 0 || io_uring_cq_ready(ring) > 0)
				break;
		}
		r->st.submitted += submitted;
		if (refusal(ret))
			refused = 1;
		else if (ret < 0 && ret != -ETIME && ret != -EINTR)
			return ret;
	} else {
		/* GETEVENTS even with nothing to submit: under DEFER_TASKRUN
		 * completions are posted only by an enter that asks. */
		ret = submit_sq(r, 1);
		if (ret < 0 && !refusal(ret))
			return ret;
		refused = ret < 0;
	}

	if (refused) {
		r->st.retries++;
		if (io_uring_cq_ready(ring) == 0) {
			struct io_uring_cqe *cqe;
			struct __kernel_timespec ts = { 0, 0 };

			/* Wait for completions without submitting, briefly:
			 * EAGAIN may clear without any completion. */
			if (wait_nr > 0) {
				int64_t ns = timeout_ns >= 0 && timeout_ns < RL_RETRY_NS ? timeout_ns : RL_RETRY_NS;

				ts.tv_nsec = ns;
			}
			r->st.enters++;
			io_uring_wait_cqe_timeout(ring, &cqe, &ts);
		}
	}
	return (int)reap_all(r, out, cap);
}

int rl_tick(struct rl_ring *r, const struct rl_op *ops, unsigned nops,
	    struct rl_cqe *out, unsigned cap, unsigned wait_nr, int64_t timeout_ns,
	    unsigned min_wait_usec, int32_t buf_tail)
{
	int refused = place_ops(r, ops, nops, buf_tail);

	if (refused < 0)
		return refused;
	return finish_tick(r, out, cap, wait_nr, timeout_ns, min_wait_usec, refused);
}

/* Makes the SQEs placed since the last submission visible to the kernel
 * (the SQ tail) without entering: the enter that submits them is the
 * caller's. liburing does this inside its submit calls and does not export
 * it. Returns how many SQEs the SQ holds for the kernel to take. */
static unsigned flush_sq(struct io_uring *ring)
{
	struct io_uring_sq *sq = &ring->sq;
	unsigned tail = sq->sqe_tail;

	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		io_uring_smp_store_release(sq->ktail, tail);
	}
	return tail - io_uring_smp_load_acquire(sq->khead);
}

unsigned *rl_cq_khead(struct rl_ring *r) { return r->ring.cq.khead; }
unsigned *rl_cq_ktail(struct rl_ring *r) { return r->ring.cq.ktail; }

int rl_tick_prep(struct rl_ring *r, const struct rl_op *ops, unsigned nops,
		 struct rl_cqe *out, unsigned cap, int32_t buf_tail)
{
	struct io_uring *ring = &r->ring;
	int refused = place_ops(r, ops, nops, buf_tail);

	if (refused < 0)
		return refused;
	if (refused || io_uring_cq_ready(ring) > 0 ||
	    (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_CQ_OVERFLOW) ||
	    (ring->flags & IORING_SETUP_SQPOLL) || injected_pending(r))
		return finish_tick(r, out, cap, 0, 0, 0, refused);
	r->st.pending = flush_sq(ring);
	return 0;
}

unsigned rl_last_submitted(struct rl_ring *r) { return r->st.submitted; }

int rl_has_min_timeout(struct rl_ring *r)
{
	return (r->ring.features & IORING_FEAT_MIN_TIMEOUT) != 0;
}

int rl_probe_ops(unsigned char *ops_supported, unsigned n)
{
	struct io_uring_probe *p = io_uring_get_probe();
	unsigned i;

	if (!p)
		return -ENOSYS;
	for (i = 0; i < n; i++)
		ops_supported[i] = io_uring_opcode_supported(p, (int)i) ? 1 : 0;
	io_uring_free_probe(p);
	return 0;
}

int rl_kernel_opcode(int which)
{
	switch (which) {
	case RL_OP_ACCEPT_MULTI: return IORING_OP_ACCEPT;
	case RL_OP_RECV_MULTI: return IORING_OP_RECV;
	case RL_OP_SEND: return IORING_OP_SEND;
	case RL_OP_SENDMSG: return IORING_OP_SENDMSG;
	case RL_OP_CANCEL: return IORING_OP_ASYNC_CANCEL;
	case RL_OP_CLOSE: return IORING_OP_CLOSE;
	case RL_OP_CLOSE_DIRECT: return IORING_OP_CLOSE;
	case RL_OP_FILES_UPDATE: return IORING_OP_FILES_UPDATE;
	case RL_OP_READ: return IORING_OP_READ;
	case RL_OP_SHUTDOWN: return IORING_OP_SHUTDOWN;
	case RL_OP_CONNECT: return IORING_OP_CONNECT;
	case RL_OP_TIMEOUT: return IORING_OP_TIMEOUT;
	case RL_OP_SOCKET: return IORING_OP_SOCKET;
	case RL_OP_SEND_ZC: return IORING_OP_SEND_ZC;
	case RL_OP_SENDMSG_ZC: return IORING_OP_SENDMSG_ZC;
	case RL_OP_LINK_TIMEOUT: return IORING_OP_LINK_TIMEOUT;
	}
	return -1;
}

/* rl_probe's buffer group: private to the probe ring. */
#define RL_PROBE_BGID 0

/* The probe's user_data: each completion is matched to its op, since their
 * order differs between rings (without DEFER_TASKRUN the recv probe's last
 * completion can arrive after the accept probe has started). */
enum { PROBE_UD_RECV = 1, PROBE_UD_ACCEPT = 2, PROBE_UD_CANCEL = 3, PROBE_UD_SEND_ZC = 4 };

/* Consumes one completion (waiting up to a second for it) and reports it.
 * A socket an accept completion carries was accepted by this probe and is
 * closed here, unless keep says the caller takes it. */
static int probe_next(struct io_uring *ring, uint64_t *ud, int *res, unsigned *flags, int keep)
{
	struct __kernel_timespec ts = { .tv_sec = 1, .tv_nsec = 0 };
	struct io_uring_cqe *cqe;
	int ret = io_uring_wait_cqe_timeout(ring, &cqe, &ts);

	if (ret < 0)
		return ret;
	*ud = cqe->user_data;
	*res = cqe->res;
	*flags = cqe->flags;
	io_uring_cqe_seen(ring, cqe);
	if (*ud == PROBE_UD_ACCEPT && *res >= 0 && !keep) {
		close(*res);
		*res = 0;
	}
	return 0;
}

/* Waits for the next completion of want, consuming (and closing what
 * they carry) any other probe completions that come first. */
static int probe_wait(struct io_uring *ring, uint64_t want, int *res, unsigned *flags)
{
	uint64_t ud;
	int ret;

	do {
		ret = probe_next(ring, &ud, res, flags, want == PROBE_UD_ACCEPT);
	} while (ret == 0 && ud != want);
	return ret;
}

/* Stops the multishot op ud (still armed when armed is set): cancels it
 * and consumes completions until both its last one and the cancel's have
 * come, so nothing of this probe is left in the ring for the next one. */
static void probe_stop(struct io_uring *ring, uint64_t ud, int armed)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	uint64_t got;
	unsigned flags;
	int res, cancelled = 0;

	if (!sqe)
		return;
	io_uring_prep_cancel64(sqe, ud, 0);
	io_uring_sqe_set_data64(sqe, PROBE_UD_CANCEL);
	if (io_uring_submit(ring) < 0)
		return;
	while (armed || !cancelled) {
		if (probe_next(ring, &got, &res, &flags, 0))
			return;
		if (got == PROBE_UD_CANCEL)
			cancelled = 1;
		else if (got == ud && !(flags & IORING_CQE_F_MORE))
			armed = 0;
	}
}

/* 1 when a multishot recv stays armed after its first completion. */
static int probe_recv_multishot(struct io_uring *ring)
{
	struct io_uring_sqe *sqe;
	unsigned flags;
	int sv[2], ret, res;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	ret = -EIO;
	if (write(sv[1], "x", 1) != 1)
		goto out;
	sqe = io_uring_get_sqe(ring);
	if (!sqe)
		goto out;
	io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = RL_PROBE_BGID;
	io_uring_sqe_set_data64(sqe, PROBE_UD_RECV);
	ret = io_uring_submit(ring);
	if (ret < 0)
		goto out;
	ret = probe_wait(ring, PROBE_UD_RECV, &res, &flags);
	if (ret < 0)
		goto out;
	ret = res > 0 && (flags & IORING_CQE_F_MORE) ? 1 : 0;
	probe_stop(ring, PROBE_UD_RECV, (flags & IORING_CQE_F_MORE) != 0);
out:
	close(sv[0]);
	close(sv[1]);
	return ret;
}

/* 1 when a multishot accept stays armed after its first connection. */
static int probe_accept_multishot(struct io_uring *ring)
{
	struct sockaddr_un sa;
	socklen_t len;
	struct io_uring_sqe *sqe;
	unsigned flags;
	int lfd, cfd = -1, ret, res;

	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return -errno;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	/* An address of just the family autobinds an abstract name. */
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa_family_t)) || listen(lfd, 4)) {
		ret = -errno;
		goto out;
	}
	len = sizeof(sa);
	if (getsockname(lfd, (struct sockaddr *)&sa, &len)) {
		ret = -errno;
		goto out;
	}
	cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&sa, len)) {
		ret = -errno;
		goto out;
	}
	ret = -EIO;
	sqe = io_uring_get_sqe(ring);
	if (!sqe)
		goto out;
	io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, PROBE_UD_ACCEPT);
	ret = io_uring_submit(ring);
	if (ret < 0)
		goto out;
	ret = probe_wait(ring, PROBE_UD_ACCEPT, &res, &flags);
	if (ret < 0)
		goto out;
	ret = res >= 0 && (flags & IORING_CQE_F_MORE) ? 1 : 0;
	/* Only a socket this accept returned is closed. */
	if (res >= 0)
		close(res);
	probe_stop(ring, PROBE_UD_ACCEPT, (flags & IORING_CQE_F_MORE) != 0);
out:
	if (cfd >= 0)
		close(cfd);
	close(lfd);
	return ret;
}

/* A connected TCP pair over 127.0.0.1: *a and *b, or -errno. */
static int tcp_pair(int *a, int *b)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int lfd, cfd = -1, afd, ret;

	*a = *b = -1;
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return -errno;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &len)) {
		ret = -errno;
		goto out;
	}
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&sa, len)) {
		ret = -errno;
		goto out;
	}
	afd = accept(lfd, NULL, NULL);
	if (afd >= 0)
		fcntl(afd, F_SETFD, FD_CLOEXEC);
	if (afd < 0) {
		ret = -errno;
		goto out;
	}
	*a = afd;
	*b = cfd;
	cfd = -1;
	ret = 0;
out:
	if (cfd >= 0)
		close(cfd);
	close(lfd);
	return ret;
}

/* One SEND_ZC asking for a usage report, over TCP loopback; fills the zc_*
 * fields of info. It follows the kernel's rule: a notification comes
 * exactly when the first completion carries IORING_CQE_F_MORE. */
static void probe_send_zc(struct io_uring *ring, struct rl_probe_info *info)
{
	static char msg[4096];
	struct io_uring_sqe *sqe;
	unsigned flags;
	int a, b, ret, res;

	info->zc_probed = 1;
	ret = tcp_pair(&a, &b);
	if (ret < 0) {
		info->zc_setup_err = ret;
		return;
	}
	sqe = io_uring_get_sqe(ring);
	if (!sqe) {
		info->zc_setup_err = -EBUSY;
		goto out;
	}
	io_uring_prep_send_zc(sqe, a, msg, sizeof(msg), MSG_NOSIGNAL, IORING_SEND_ZC_REPORT_USAGE);
	io_uring_sqe_set_data64(sqe, PROBE_UD_SEND_ZC);
	ret = io_uring_submit(ring);
	if (ret < 0) {
		info->zc_setup_err = ret;
		goto out;
	}
	ret = probe_wait(ring, PROBE_UD_SEND_ZC, &res, &flags);
	if (ret < 0) {
		info->zc_setup_err = ret;
		goto out;
	}
	info->zc_res = res;
	if (flags & IORING_CQE_F_MORE) {
		if (probe_wait(ring, PROBE_UD_SEND_ZC, &res, &flags) == 0 && (flags & IORING_CQE_F_NOTIF)) {
			info->zc_notif = 1;
			info->zc_copied = ((unsigned)res & IORING_NOTIF_USAGE_ZC_COPIED) != 0;
		}
	}
out:
	close(a);
	close(b);
}

int rl_probe(struct rl_probe_info *info, unsigned entries, unsigned want_flags, unsigned options)
{
	struct rl_ring *r = NULL;
	struct io_uring_probe *p;
	struct io_uring_buf_ring *br;
	void *buf = NULL;
	int err = 0;
	unsigned i;

	memset(info, 0, sizeof(*info));
	info->setup_err = rl_ring_init(&r, entries, entries * 4, want_flags);
	if (info->setup_err)
		return info->setup_err;
	info->setup_flags = r->st.setup_flags;
	info->features = r->ring.features;
	p = io_uring_get_probe_ring(&r->ring);
	if (p) {
		for (i = 0; i < sizeof(info->ops); i++)
			info->ops[i] = io_uring_opcode_supported(p, (int)i) ? 1 : 0;
		io_uring_free_probe(p);
	}
	info->send_zc = info->ops[IORING_OP_SEND_ZC];
	info->sendmsg_zc = info->ops[IORING_OP_SENDMSG_ZC];

	br = io_uring_setup_buf_ring(&r->ring, 1, RL_PROBE_BGID, 0, &err);
	info->buf_ring_err = br ? 0 : (err ? err : -EINVAL);
	if (br) {
		r->br = br;
		r->br_entries = 1;
		r->bgid = RL_PROBE_BGID;
		buf = malloc(64);
		if (buf) {
			io_uring_buf_ring_add(br, buf, 64, 0, io_uring_buf_ring_mask(1), 0);
			io_uring_buf_ring_advance(br, 1);
			info->recv_multishot = probe_recv_multishot(&r->ring);
		} else {
			info->recv_multishot = -ENOMEM;
		}
	} else {
		info->recv_multishot = info->buf_ring_err;
	}
	info->accept_multishot = probe_accept_multishot(&r->ring);
	if (info->send_zc && (options & RL_PROBE_SEND_ZC))
		probe_send_zc(&r->ring, info);
	/* Unregisters the buffer ring and tears the ring down (cancelling the
	 * probes still armed) before the buffer they might use is freed. */
	rl_ring_free(r);
	free(buf);
	return 0;
}
