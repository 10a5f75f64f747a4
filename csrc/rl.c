/*
 * rl.c — see rl.h. Plain liburing; nothing here allocates per operation.
 */
#include "rl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <liburing.h>
#include "compat.h" /* what an older liburing lacks */

struct rl_ring {
	struct io_uring ring;
	unsigned setup_flags; /* RL_SETUP_* accepted */
	uint64_t enters;
	unsigned submitted; /* by the last rl_tick */
	struct io_uring_buf_ring *br;
	unsigned br_entries;
	unsigned bgid;
};

int rl_ring_init(struct rl_ring **out, unsigned entries, unsigned cq_entries, unsigned want_flags)
{
	/* Most capable first; each rung drops what an older kernel refuses. */
	static const unsigned ladder[] = {
		RL_SETUP_SINGLE_ISSUER | RL_SETUP_DEFER_TASKRUN | RL_SETUP_CQSIZE,
		RL_SETUP_COOP_TASKRUN | RL_SETUP_TASKRUN_FLAG | RL_SETUP_CQSIZE,
		RL_SETUP_COOP_TASKRUN | RL_SETUP_CQSIZE,
		RL_SETUP_CQSIZE,
		0,
	};
	struct rl_ring *r = calloc(1, sizeof(*r));
	int ret = -EINVAL;
	unsigned i, last = (unsigned)-1;

	if (!r)
		return -ENOMEM;
	for (i = 0; i < sizeof(ladder) / sizeof(ladder[0]); i++) {
		unsigned f = ladder[i];
		struct io_uring_params p;

		/* A flag outside want_flags is treated as refused (EINVAL), so
		 * tests can walk the same retry path an older kernel takes. */
		if ((f & ~want_flags) || f == last) {
			ret = -EINVAL;
			continue;
		}
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
		if ((f & RL_SETUP_CQSIZE) && cq_entries > entries) {
			p.flags |= IORING_SETUP_CQSIZE;
			p.cq_entries = cq_entries;
		} else {
			f &= ~RL_SETUP_CQSIZE;
		}
		ret = io_uring_queue_init_params(entries, &r->ring, &p);
		if (ret == 0) {
			r->setup_flags = f;
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
	if (r->br)
		io_uring_free_buf_ring(&r->ring, r->br, r->br_entries, r->bgid);
	io_uring_queue_exit(&r->ring);
	free(r);
}

unsigned rl_ring_setup_flags(struct rl_ring *r) { return r->setup_flags; }
int rl_ring_fd(struct rl_ring *r) { return r->ring.ring_fd; }
uint64_t rl_ring_enters(struct rl_ring *r) { return r->enters; }
const uint64_t *rl_ring_enters_ptr(struct rl_ring *r) { return &r->enters; }

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

int rl_tick(struct rl_ring *r, const struct rl_op *ops, unsigned nops,
	    struct rl_cqe *out, unsigned cap, unsigned wait_nr, int64_t timeout_ns,
	    unsigned min_wait_usec)
{
	struct io_uring *ring = &r->ring;
	unsigned i, queued = 0, submitted = 0;
	int ret;

	for (i = 0; i < nops; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

		if (!sqe) {
			/* SQ full: push what is queued and keep going. A link
			 * chain is never split: Go stages at most ring-size ops
			 * and links only pairs. */
			r->enters++;
			ret = io_uring_submit(ring);
			if (ret < 0)
				return ret;
			submitted += ret;
			queued = 0;
			sqe = io_uring_get_sqe(ring);
			if (!sqe)
				return -EBUSY;
		}
		prep_one(sqe, &ops[i]);
		queued++;
	}

	if (io_uring_cq_ready(ring) > 0) {
		/* Completions are already waiting: never block, and enter only
		 * to push new submissions. */
		if (queued) {
			r->enters++;
			ret = io_uring_submit(ring);
			if (ret < 0)
				return ret;
			submitted += ret;
		}
	} else if (wait_nr > 0) {
		struct io_uring_cqe *cqe = NULL;
		struct __kernel_timespec ts, *tsp = NULL;

		if (timeout_ns >= 0) {
			ts.tv_sec = timeout_ns / 1000000000LL;
			ts.tv_nsec = timeout_ns % 1000000000LL;
			tsp = &ts;
		}
		r->enters++;
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
		if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			return ret;
		if (ret > 0)
			submitted += ret;
	} else {
		r->enters++;
		ret = io_uring_submit_and_get_events(ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			return ret;
		if (ret > 0)
			submitted += ret;
	}
	r->submitted = submitted;
	return (int)reap(r, out, cap);
}

unsigned rl_last_submitted(struct rl_ring *r) { return r->submitted; }

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
	}
	return -1;
}

/* rl_probe's buffer group: private to the probe ring. */
#define RL_PROBE_BGID 0

static int probe_wait(struct io_uring *ring, struct io_uring_cqe **cqe)
{
	struct __kernel_timespec ts = { .tv_sec = 1, .tv_nsec = 0 };

	return io_uring_wait_cqe_timeout(ring, cqe, &ts);
}

/* 1 when a multishot recv stays armed after its first completion. */
static int probe_recv_multishot(struct io_uring *ring)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	int sv[2], ret;

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
	io_uring_sqe_set_data64(sqe, 1);
	ret = io_uring_submit(ring);
	if (ret < 0)
		goto out;
	ret = probe_wait(ring, &cqe);
	if (ret < 0)
		goto out;
	ret = cqe->res > 0 && (cqe->flags & IORING_CQE_F_MORE) ? 1 : 0;
	io_uring_cqe_seen(ring, cqe);
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
	struct io_uring_cqe *cqe;
	int lfd, cfd = -1, ret;

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
	io_uring_sqe_set_data64(sqe, 2);
	ret = io_uring_submit(ring);
	if (ret < 0)
		goto out;
	ret = probe_wait(ring, &cqe);
	if (ret < 0)
		goto out;
	ret = cqe->res >= 0 && (cqe->flags & IORING_CQE_F_MORE) ? 1 : 0;
	if (cqe->res >= 0)
		close(cqe->res);
	io_uring_cqe_seen(ring, cqe);
out:
	if (cfd >= 0)
		close(cfd);
	close(lfd);
	return ret;
}

int rl_probe(struct rl_probe_info *info, unsigned entries, unsigned want_flags)
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
	info->setup_flags = r->setup_flags;
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
	/* Unregisters the buffer ring and tears the ring down (cancelling the
	 * probes still armed) before the buffer they might use is freed. */
	rl_ring_free(r);
	free(buf);
	return 0;
}
