/*
 * rl_test.c — tests of the C layer on its own: ring setup and every rung of
 * the flag ladder, the CQ size clamp, batched NOPs through rl_tick (SQ-sized
 * chunks, link chains kept whole, the batch wait), submit errors by fault
 * injection, an overflowed CQ, a provided buffer ring fed by a multishot
 * recv (and refilled through rl_tick's tail publish), the sparse fixed-file
 * table in use, the opcode probe and the kernel feature probe on every rung.
 * Exits non-zero on any failure. With RINGLINE_REQUIRE_IOURING=1 a kernel
 * feature a test needs is required; otherwise its absence prints SKIP.
 */
#include "rl.h"
#include "buildinfo.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>

static int failures, passed, skipped;

#define CHECK(cond, ...)                                            \
	do {                                                        \
		if (!(cond)) {                                      \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
			fprintf(stderr, __VA_ARGS__);               \
			fprintf(stderr, "\n");                      \
			failures++;                                 \
			return;                                     \
		}                                                   \
	} while (0)

/* A kernel feature is missing: SKIP, or FAIL when the run requires it. */
static void skip(const char *test, const char *why)
{
	const char *req = getenv("RINGLINE_REQUIRE_IOURING");

	if (req && strcmp(req, "1") == 0) {
		fprintf(stderr, "FAIL %s: %s (RINGLINE_REQUIRE_IOURING=1)\n", test, why);
		failures++;
		return;
	}
	printf("SKIP %s: %s\n", test, why);
	skipped++;
}

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static double elapsed_ms(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (t1.tv_sec - t0->tv_sec) * 1e3 + (t1.tv_nsec - t0->tv_nsec) / 1e6;
}

#define SI RL_SETUP_SINGLE_ISSUER
#define DT RL_SETUP_DEFER_TASKRUN
#define COOP RL_SETUP_COOP_TASKRUN
#define TF RL_SETUP_TASKRUN_FLAG
#define CQ RL_SETUP_CQSIZE

/* The ladder, as rl.h documents it. */
static const unsigned rungs[] = {
	SI | DT | CQ, SI | DT, COOP | TF | CQ, COOP | TF, COOP | CQ, COOP, CQ, 0,
};
#define NRUNGS (sizeof(rungs) / sizeof(rungs[0]))

static void test_setup_ladder(void)
{
	struct rl_ring *r = NULL;
	unsigned i;
	int rc = rl_ring_init(&r, 64, 256, ~0u);

	CHECK(rc == 0, "rl_ring_init: %d", rc);
	CHECK(rl_ring_setup_flags(r) == (SI | DT | CQ), "unmasked flags %x, want SINGLE_ISSUER|DEFER_TASKRUN|CQSIZE on 6.x",
	      rl_ring_setup_flags(r));
	CHECK(rl_ring_status(r)->cq_entries == 256, "cq %u", rl_ring_status(r)->cq_entries);
	rl_ring_free(r);

	/* Every rung is reachable by masking to its own flags, and the ring
	 * it gives works. */
	for (i = 0; i < NRUNGS; i++) {
		struct rl_op nop;
		struct rl_cqe c[4];

		rc = rl_ring_init(&r, 64, 256, rungs[i] ? rungs[i] : 1u << 31);
		CHECK(rc == 0, "rung %u (%x): %d", i, rungs[i], rc);
		CHECK(rl_ring_setup_flags(r) == rungs[i], "rung %u: flags %x, want %x", i, rl_ring_setup_flags(r), rungs[i]);
		CHECK(rl_ring_status(r)->cq_entries == (rungs[i] & CQ ? 256u : 128u), "rung %u: cq %u", i,
		      rl_ring_status(r)->cq_entries);
		memset(&nop, 0, sizeof(nop));
		nop.user_data = 5;
		rc = rl_tick(r, &nop, 1, c, 4, 1, 1000000000LL, 0, -1);
		CHECK(rc == 1 && c[0].user_data == 5, "rung %u: nop: %d", i, rc);
		rl_ring_free(r);
	}

	/* A refused CQSIZE costs only CQSIZE. */
	rc = rl_ring_init(&r, 64, 256, ~(unsigned)CQ);
	CHECK(rc == 0 && rl_ring_setup_flags(r) == (SI | DT), "CQSIZE masked: %d flags %x", rc, r ? rl_ring_setup_flags(r) : 0);
	rl_ring_free(r);

	/* A CQ above the kernel's maximum is clamped, not a flagless ring. */
	rc = rl_ring_init(&r, 32768, 4 * 32768, ~0u);
	CHECK(rc == 0, "32768 entries: %d", rc);
	CHECK(rl_ring_setup_flags(r) == (SI | DT | CQ), "32768 entries: flags %x", rl_ring_setup_flags(r));
	CHECK(rl_ring_status(r)->cq_entries == RL_MAX_CQ_ENTRIES, "32768 entries: cq %u", rl_ring_status(r)->cq_entries);
	rl_ring_free(r);

	/* A CQ as small as the SQ (tests use it to overflow the CQ). */
	rc = rl_ring_init(&r, 8, 8, ~0u);
	CHECK(rc == 0 && rl_ring_status(r)->cq_entries == 8, "cq 8: %d", rc);
	rl_ring_free(r);

	/* A size the kernel refuses outright is an error, not a crash. */
	rc = rl_ring_init(&r, 0, 0, ~0u);
	CHECK(rc < 0, "entries=0 should fail, got %d", rc);
	passed++;
}

static void test_nop_batch(void)
{
	struct rl_ring *r = NULL;
	struct rl_op ops[200];
	struct rl_cqe cqes[256];
	unsigned got = 0, i;
	uint64_t seen = 0;
	int rc = rl_ring_init(&r, 64, 512, ~0u);

	CHECK(rc == 0, "init: %d", rc);
	memset(ops, 0, sizeof(ops));
	for (i = 0; i < 200; i++) {
		ops[i].opcode = RL_OP_NOP;
		ops[i].user_data = 1000 + i;
	}
	/* 200 ops through a 64-entry SQ: rl_tick submits when the SQ fills. */
	rc = rl_tick(r, ops, 200, cqes, 256, 1, 1000000000LL, 0, -1);
	CHECK(rc >= 0, "tick: %d", rc);
	CHECK(rl_ring_status(r)->taken == 200, "taken %u of 200", rl_ring_status(r)->taken);
	got = (unsigned)rc;
	for (i = 0; i < got; i++)
		seen += cqes[i].user_data - 1000;
	while (got < 200) {
		rc = rl_tick(r, NULL, 0, cqes, 256, 1, 1000000000LL, 0, -1);
		CHECK(rc > 0, "tick drain: %d after %u", rc, got);
		for (i = 0; i < (unsigned)rc; i++)
			seen += cqes[i].user_data - 1000;
		got += (unsigned)rc;
	}
	CHECK(got == 200, "got %u completions", got);
	CHECK(seen == 199 * 200 / 2, "user_data sum %llu", (unsigned long long)seen);
	CHECK(rl_ring_enters(r) <= 6, "enters %llu for 200 nops", (unsigned long long)rl_ring_enters(r));
	/* Idle wait with a timeout returns 0 completions, not an error. */
	rc = rl_tick(r, NULL, 0, cqes, 256, 1, 10000000LL, 0, -1);
	CHECK(rc == 0, "idle tick: %d", rc);
	rl_ring_free(r);
	passed++;
}

/* The batch wait (min_wait_usec) waits past the first completion for more,
 * up to the minimum wait, and then returns what came. */
static void test_batch_wait(void)
{
	struct rl_ring *r = NULL;
	struct rl_op ops[2];
	struct rl_cqe cqes[16];
	struct __kernel_timespec ts20 = { .tv_sec = 0, .tv_nsec = 20000000 };
	struct timespec t0;
	double ms;
	int rc = rl_ring_init(&r, 64, 256, ~0u);

	CHECK(rc == 0, "init: %d", rc);
	if (rl_compiled_out() & RL_OUT_MIN_TIMEOUT) {
		/* This build's liburing (older than 2.8) has no min-timeout
		 * wait: a property of the build, not of the kernel, so a SKIP
		 * even when io_uring is required. */
		rl_ring_free(r);
		printf("SKIP test_batch_wait: built against liburing %d.%d, which has no min-timeout wait\n",
		       rl_liburing_version() / 100, rl_liburing_version() % 100);
		skipped++;
		return;
	}
	if (!rl_has_min_timeout(r)) {
		rl_ring_free(r);
		if (rl_compiled_out() & RL_OUT_MIN_TIMEOUT) {
			/* This build's liburing (< 2.8) leaves batch waits out:
			 * nothing the kernel did, so never a failure. */
			printf("SKIP test_batch_wait: built against liburing %d.%d, which lacks min-timeout waits\n",
			       rl_liburing_version() / 100, rl_liburing_version() % 100);
			skipped++;
			return;
		}
		skip("test_batch_wait", "the kernel lacks IORING_FEAT_MIN_TIMEOUT (6.12+)"); /* a FAIL when required */
		return;
	}
	memset(ops, 0, sizeof(ops));
	/* A NOP completes at once, a 20 ms timeout later. Asked for 2 with a
	 * 5 s minimum wait, the tick returns both (it did not return on the
	 * first), as soon as both are there (it did not sit out the 5 s). */
	ops[0].opcode = RL_OP_NOP;
	ops[0].user_data = 1;
	ops[1].opcode = RL_OP_TIMEOUT;
	ops[1].addr = (uint64_t)(uintptr_t)&ts20;
	ops[1].user_data = 2;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = rl_tick(r, ops, 2, cqes, 16, 2, 20000000000LL, 5000000, -1);
	ms = elapsed_ms(&t0);
	CHECK(rc == 2, "batch of 2: got %d (ud %llu)", rc, rc > 0 ? (unsigned long long)cqes[0].user_data : 0ULL);
	CHECK(cqes[0].user_data == 1 && cqes[1].user_data == 2 && cqes[1].res == -ETIME, "batch: ud %llu/%llu res %d",
	      (unsigned long long)cqes[0].user_data, (unsigned long long)cqes[1].user_data, cqes[1].res);
	CHECK(ms >= 19 && ms < 4500, "batch of 2 took %.1f ms, want the timeout's 20 ms, not the 5 s minimum wait", ms);

	/* Asked for 8 with only one coming: it waits out the 50 ms minimum
	 * wait, then returns the one, long before the 10 s timeout. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = rl_tick(r, ops, 1, cqes, 16, 8, 10000000000LL, 50000, -1);
	ms = elapsed_ms(&t0);
	CHECK(rc == 1 && cqes[0].user_data == 1, "batch of 8: rc %d", rc);
	CHECK(ms >= 49, "batch of 8 returned after %.1f ms, before the 50 ms minimum wait", ms);
	CHECK(ms < 9000, "batch of 8 blocked %.1f ms, toward the full 10 s timeout", ms);
	rl_ring_free(r);
	passed++;
}

/* Link chains are never split across submissions: a failing op linked to
 * a NOP cancels the NOP even when the pair straddles a full SQ. */
static void test_links_whole(void)
{
	struct rl_ring *r = NULL;
	struct rl_op ops[40];
	struct rl_cqe cqes[64];
	unsigned got = 0, i, pairs = 0;
	int rc = rl_ring_init(&r, 8, 64, ~0u);

	CHECK(rc == 0, "init: %d", rc);
	memset(ops, 0, sizeof(ops));
	/* 7 NOPs, then (bad close -> NOP) pairs: the first pair starts on the
	 * SQ's last slot. */
	for (i = 0; i < 40; i++) {
		ops[i].opcode = RL_OP_NOP;
		ops[i].user_data = i;
	}
	for (i = 7; i + 1 < 40; i += 3) {
		ops[i].opcode = RL_OP_CLOSE;
		ops[i].fd = -1;
		ops[i].flags = RL_F_LINK;
		pairs++;
	}
	rc = rl_tick(r, ops, 40, cqes, 64, 0, -1, 0, -1);
	CHECK(rc >= 0 && rl_ring_status(r)->taken == 40, "tick: %d taken %u", rc, rl_ring_status(r)->taken);
	for (;;) {
		for (i = 0; i < (unsigned)rc; i++) {
			unsigned ud = (unsigned)cqes[i].user_data;

			if (ud >= 8 && (ud - 7) % 3 == 1)
				CHECK(cqes[i].res == -ECANCELED, "op %u after a failed link: res %d (chain split)", ud,
				      cqes[i].res);
			else if (ops[ud].opcode == RL_OP_CLOSE)
				CHECK(cqes[i].res == -EBADF, "bad close %u: %d", ud, cqes[i].res);
			else
				CHECK(cqes[i].res == 0, "nop %u: %d", ud, cqes[i].res);
		}
		got += (unsigned)rc;
		if (got >= 40)
			break;
		rc = rl_tick(r, NULL, 0, cqes, 64, 1, 1000000000LL, 0, -1);
		CHECK(rc > 0, "drain: %d after %u", rc, got);
	}
	CHECK(got == 40 && pairs > 5, "got %u", got);

	/* A chain longer than the SQ can never go in one submission. */
	for (i = 0; i < 9; i++)
		ops[i].flags = RL_F_LINK;
	ops[9].flags = 0;
	rc = rl_tick(r, ops, 10, cqes, 64, 0, -1, 0, -1);
	CHECK(rc == -EINVAL && rl_ring_status(r)->taken == 0, "over-long chain: %d", rc);
	rl_ring_free(r);
	passed++;
}

/* Submit errors by fault injection: none is fatal that the kernel means as
 * "try again", no op is lost, every completion comes exactly once. */
static void submit_errors(int err)
{
	struct rl_ring *r = NULL;
	struct rl_op ops[100];
	struct rl_cqe cqes[256];
	unsigned char seen[100];
	unsigned off = 0, got = 0, i, ticks = 0;
	uint64_t retries;
	int rc = rl_ring_init(&r, 8, 16, ~0u);

	CHECK(rc == 0, "init: %d", rc);
	memset(ops, 0, sizeof(ops));
	memset(seen, 0, sizeof(seen));
	for (i = 0; i < 100; i++)
		ops[i].user_data = i;
	CHECK(rl_test_fail_submits(r, err, 5) == 0, "pending injections");
	while (got < 100 && ticks++ < 100) {
		rc = rl_tick(r, ops + off, 100 - off, cqes, 256, got < off ? 1 : 0, 50000000LL, 0, -1);
		CHECK(rc >= 0, "errno %d injected: tick failed with %d", err, rc);
		off += rl_ring_status(r)->taken;
		CHECK(off <= 100, "taken past the end");
		for (i = 0; i < (unsigned)rc; i++) {
			unsigned ud = (unsigned)cqes[i].user_data;

			CHECK(ud < 100 && !seen[ud], "completion %u twice or unknown", ud);
			seen[ud] = 1;
		}
		got += (unsigned)rc;
	}
	CHECK(got == 100 && off == 100, "errno %d: %u completions, %u taken, after %u ticks", err, got, off, ticks);
	CHECK(rl_test_fail_submits(r, 0, 0) == 0, "injections left unused");
	retries = rl_ring_status(r)->retries;
	CHECK(retries >= (err == EINTR ? 5 : 1), "errno %d: %llu retries", err, (unsigned long long)retries);
	rl_ring_free(r);
}

static void test_submit_errors(void)
{
	int before = failures;
	struct rl_ring *r = NULL;
	struct rl_op ops[20];
	struct rl_cqe cqes[64];
	unsigned off, got;
	int rc;

	submit_errors(EINTR);
	submit_errors(EAGAIN);
	submit_errors(EBUSY);
	if (failures != before)
		return;

	/* An error retrying cannot fix is returned, and says which ops were
	 * taken: passing the rest again loses nothing. */
	CHECK(rl_ring_init(&r, 8, 64, ~0u) == 0, "init");
	memset(ops, 0, sizeof(ops));
	rl_test_fail_submits(r, EBADF, 1);
	rc = rl_tick(r, ops, 20, cqes, 64, 0, -1, 0, -1);
	CHECK(rc == -EBADF, "fatal errno: %d", rc);
	off = rl_ring_status(r)->taken;
	CHECK(off == 8, "taken before the failure: %u", off);
	got = 0;
	while (got < 20) {
		rc = rl_tick(r, ops + off, 20 - off, cqes, 64, got < 20 ? 1 : 0, 1000000000LL, 0, -1);
		CHECK(rc > 0, "after the fatal error: %d (%u of 20)", rc, got);
		off += rl_ring_status(r)->taken;
		got += (unsigned)rc;
	}
	CHECK(got == 20, "got %u", got);
	rl_ring_free(r);
	passed++;
}

/* A CQ smaller than one tick's completions: the kernel keeps the surplus
 * in its overflow list, and rl_tick moves it in, in order, losing none. */
static void test_cq_overflow(void)
{
	struct rl_ring *r = NULL;
	struct rl_op ops[64];
	struct rl_cqe cqes[256];
	unsigned got = 0, i;
	int rc = rl_ring_init(&r, 8, 8, ~0u);

	CHECK(rc == 0, "init: %d", rc);
	memset(ops, 0, sizeof(ops));
	for (i = 0; i < 64; i++)
		ops[i].user_data = i;
	/* 64 completions into an 8-entry CQ, in one tick with room for all. */
	rc = rl_tick(r, ops, 64, cqes, 256, 0, -1, 0, -1);
	CHECK(rc == 64, "one tick: %d of 64 (overflow backlog not moved in)", rc);
	for (i = 0; i < 64; i++)
		CHECK(cqes[i].user_data == i, "completion %u is %llu", i, (unsigned long long)cqes[i].user_data);
	CHECK(rl_ring_status(r)->overflow_flushes > 0, "the CQ never overflowed");
	CHECK(rl_ring_status(r)->cq_dropped == 0, "dropped %u", rl_ring_status(r)->cq_dropped);

	/* Room for only 5 per tick: each tick still makes progress. */
	rc = rl_tick(r, ops, 64, cqes, 5, 0, -1, 0, -1);
	CHECK(rc == 5, "cap 5: %d", rc);
	got = 5;
	for (i = 0; i < 5; i++)
		CHECK(cqes[i].user_data == i, "completion %u is %llu", i, (unsigned long long)cqes[i].user_data);
	while (got < 64) {
		rc = rl_tick(r, NULL, 0, cqes, 5, 1, 1000000000LL, 0, -1);
		CHECK(rc > 0, "stalled at %u: %d", got, rc);
		for (i = 0; i < (unsigned)rc; i++)
			CHECK(cqes[i].user_data == got + i, "completion %u is %llu", got + i,
			      (unsigned long long)cqes[i].user_data);
		got += (unsigned)rc;
	}
	CHECK(rl_ring_status(r)->cq_dropped == 0, "dropped %u", rl_ring_status(r)->cq_dropped);
	rl_ring_free(r);
	passed++;
}

static void test_buf_ring_recv(void)
{
	struct rl_ring *r = NULL;
	struct rl_op op;
	struct rl_cqe cqes[16];
	unsigned submitted;
	int sv[2], rc, err = 0;
	void *mem = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct io_uring_buf_ring *br;

	CHECK(mem != MAP_FAILED, "mmap");
	CHECK(rl_ring_init(&r, 32, 128, ~0u) == 0, "init");
	br = rl_buf_ring_setup(r, 1, 0, mem, 4096, &err);
	CHECK(br != NULL, "buf ring: %d", err);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");

	memset(&op, 0, sizeof(op));
	op.opcode = RL_OP_RECV_MULTI;
	op.fd = sv[0];
	op.user_data = 7;
	rc = rl_tick(r, &op, 1, cqes, 16, 0, -1, 0, -1);
	submitted = rl_last_submitted(r);
	CHECK(rc >= 0 && submitted == 1, "arm recv: rc %d sub %u", rc, submitted);
	CHECK(write(sv[1], "ping", 4) == 4, "write");
	rc = rl_tick(r, NULL, 0, cqes, 16, 1, 1000000000LL, 0, -1);
	CHECK(rc == 1, "recv completions: %d", rc);
	CHECK(cqes[0].user_data == 7 && cqes[0].res == 4, "cqe ud %llu res %d",
	      (unsigned long long)cqes[0].user_data, cqes[0].res);
	CHECK(cqes[0].flags & IORING_CQE_F_BUFFER, "no buffer flag");
	CHECK(cqes[0].flags & IORING_CQE_F_MORE, "multishot not armed");
	CHECK(cqes[0].flags >> 16 == 0 && memcmp(mem, "ping", 4) == 0, "buffer content");

	/* The one buffer is out: the next data finds none. */
	CHECK(write(sv[1], "pong", 4) == 4, "write");
	rc = rl_tick(r, NULL, 0, cqes, 16, 1, 1000000000LL, 0, -1);
	CHECK(rc == 1 && cqes[0].res == -ENOBUFS && !(cqes[0].flags & IORING_CQE_F_MORE), "no buffer: rc %d res %d", rc,
	      cqes[0].res);
	/* Give it back the way Go does: the entry written here, the tail
	 * published by rl_tick. */
	br->bufs[1 & io_uring_buf_ring_mask(1)].addr = (uint64_t)(uintptr_t)mem;
	br->bufs[1 & io_uring_buf_ring_mask(1)].len = 4096;
	br->bufs[1 & io_uring_buf_ring_mask(1)].bid = 0;
	rc = rl_tick(r, &op, 1, cqes, 16, 1, 1000000000LL, 0, 2);
	CHECK(rc == 1 && cqes[0].res == 4 && (cqes[0].flags & IORING_CQE_F_BUFFER), "after the tail publish: rc %d res %d",
	      rc, cqes[0].res);
	CHECK(memcmp(mem, "pong", 4) == 0, "buffer content after refill");
	close(sv[1]);
	rc = rl_tick(r, NULL, 0, cqes, 16, 1, 1000000000LL, 0, -1);
	CHECK(rc == 1 && (cqes[0].res == 0 || cqes[0].res == -ENOBUFS) && !(cqes[0].flags & IORING_CQE_F_MORE),
	      "EOF ends multishot: rc %d res %d", rc, cqes[0].res);
	close(sv[0]);
	rl_ring_free(r);
	munmap(mem, 4 * 4096);
	passed++;
}

/* The sparse table in use: a socket registered in a slot by FILES_UPDATE,
 * linked to a send on that slot with IOSQE_FIXED_FILE, then the slot
 * closed (a send on it then fails with EBADF). */
static void test_files_and_probe(void)
{
	struct rl_ring *r = NULL;
	unsigned char ops[256];
	struct rl_op op[2];
	struct rl_cqe cqes[8];
	int32_t *fds = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char got[8];
	int sv[2], rc;

	CHECK(fds != MAP_FAILED, "mmap");
	CHECK(rl_ring_init(&r, 8, 0, ~0u) == 0, "init");
	rc = rl_files_sparse(r, 128);
	CHECK(rc == 0, "files sparse: %d", rc);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");
	fds[0] = sv[0];
	memset(op, 0, sizeof(op));
	op[0].opcode = RL_OP_FILES_UPDATE;
	op[0].flags = RL_F_LINK;
	op[0].addr = (uint64_t)(uintptr_t)fds;
	op[0].len = 1;
	op[0].aux = 77;
	op[0].user_data = 1;
	op[1].opcode = RL_OP_SEND;
	op[1].flags = RL_F_FIXED;
	op[1].fd = 77;
	op[1].addr = (uint64_t)(uintptr_t)"fixed";
	op[1].len = 5;
	op[1].user_data = 2;
	rc = rl_tick(r, op, 2, cqes, 8, 2, 1000000000LL, 0, -1);
	while (rc == 1) {
		int more = rl_tick(r, NULL, 0, cqes + 1, 7, 1, 1000000000LL, 0, -1);

		CHECK(more > 0, "second completion: %d", more);
		rc += more;
	}
	CHECK(rc == 2, "update+send: %d", rc);
	CHECK(cqes[0].user_data == 1 && cqes[0].res == 1, "files update: ud %llu res %d",
	      (unsigned long long)cqes[0].user_data, cqes[0].res);
	CHECK(cqes[1].user_data == 2 && cqes[1].res == 5, "fixed send: ud %llu res %d",
	      (unsigned long long)cqes[1].user_data, cqes[1].res);
	/* The socket went out through the table: close our own descriptor
	 * first, so only the slot can still reach it. */
	close(sv[0]);
	CHECK(read(sv[1], got, sizeof(got)) == 5 && memcmp(got, "fixed", 5) == 0, "peer read");
	op[0].opcode = RL_OP_CLOSE_DIRECT;
	op[0].flags = 0;
	op[0].aux = 77;
	op[0].user_data = 3;
	rc = rl_tick(r, op, 1, cqes, 8, 1, 1000000000LL, 0, -1);
	CHECK(rc == 1 && cqes[0].res == 0, "close direct: %d res %d", rc, cqes[0].res);
	/* Closing the last reference: the peer sees EOF. */
	CHECK(read(sv[1], got, sizeof(got)) == 0, "peer EOF after the slot closed");
	rc = rl_tick(r, op + 1, 1, cqes, 8, 1, 1000000000LL, 0, -1);
	CHECK(rc == 1 && cqes[0].res == -EBADF, "send on a closed slot: %d res %d", rc, cqes[0].res);
	close(sv[1]);
	rl_ring_free(r);
	munmap(fds, 4096);

	rc = rl_probe_ops(ops, 256);
	CHECK(rc == 0, "probe: %d", rc);
	CHECK(ops[rl_kernel_opcode(RL_OP_RECV_MULTI)], "RECV unsupported");
	CHECK(ops[rl_kernel_opcode(RL_OP_ACCEPT_MULTI)], "ACCEPT unsupported");
	CHECK(rl_kernel_opcode(999) == -1, "unknown op mapped");
	passed++;
}

static void test_probe(void)
{
	struct rl_probe_info info;
	unsigned i, k;
	int rc = rl_probe(&info, 64, ~0u, RL_PROBE_SEND_ZC);

	CHECK(rc == 0 && info.setup_err == 0, "rl_probe: %d", rc);
	CHECK(info.setup_flags == (SI | DT | CQ), "flags %x, want SINGLE_ISSUER|DEFER_TASKRUN|CQSIZE on 6.x",
	      info.setup_flags);
	CHECK(info.buf_ring_err == 0, "buffer ring: %d", info.buf_ring_err);
	CHECK(info.recv_multishot == 1, "multishot recv: %d", info.recv_multishot);
	CHECK(info.accept_multishot == 1, "multishot accept: %d", info.accept_multishot);
	CHECK(info.ops[rl_kernel_opcode(RL_OP_RECV_MULTI)], "RECV unsupported");
	CHECK(info.send_zc == 1, "SEND_ZC expected on 6.x");
	CHECK(info.zc_setup_err == 0 && info.zc_res == 4096 && info.zc_notif == 1 && info.zc_copied == 1,
	      "SEND_ZC over loopback: setup %d res %d notif %d copied %d (6.2+ reports the copy)", info.zc_setup_err,
	      info.zc_res, info.zc_notif, info.zc_copied);

	/* Every rung: the ring the mask asks for, both multishot checks
	 * pass, and the probe leaves no descriptor behind. */
	for (i = 0; i < NRUNGS; i++) {
		unsigned mask = rungs[i] ? rungs[i] : 1u << 31;
		int fds0 = open_fds();

		for (k = 0; k < 5; k++) {
			rc = rl_probe(&info, 64, mask, RL_PROBE_SEND_ZC);
			CHECK(rc == 0, "rung %u: rl_probe %d", i, rc);
			CHECK(info.setup_flags == rungs[i], "rung %u: flags %x", i, info.setup_flags);
			CHECK(info.recv_multishot == 1, "rung %u (%x): multishot recv %d", i, rungs[i], info.recv_multishot);
			CHECK(info.accept_multishot == 1, "rung %u (%x): multishot accept %d", i, rungs[i],
			      info.accept_multishot);
		}
		CHECK(open_fds() == fds0, "rung %u (%x): %d descriptors leaked by 5 probes", i, rungs[i], open_fds() - fds0);
	}

	/* A size the kernel refuses is reported, not fatal. */
	rc = rl_probe(&info, 0, ~0u, 0);
	CHECK(rc < 0 && info.setup_err == rc, "entries=0 should fail, got %d", rc);
	passed++;
}

/* A connected TCP pair over 127.0.0.1 (zero copy needs TCP: AF_UNIX
 * refuses it). */
static int tcp_pair(int sv[2])
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int lfd = socket(AF_INET, SOCK_STREAM, 0), ok;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = lfd >= 0 && !bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) && !listen(lfd, 1) &&
	     !getsockname(lfd, (struct sockaddr *)&sa, &len);
	sv[1] = ok ? socket(AF_INET, SOCK_STREAM, 0) : -1;
	ok = ok && sv[1] >= 0 && !connect(sv[1], (struct sockaddr *)&sa, len);
	sv[0] = ok ? accept(lfd, NULL, NULL) : -1;
	if (lfd >= 0)
		close(lfd);
	return sv[0] >= 0 ? 0 : -1;
}

/* Collects completions until want have come (waiting up to
 * a second each time). */
static int collect(struct rl_ring *r, struct rl_cqe *out, int want)
{
	int n = 0, rc;

	while (n < want) {
		rc = rl_tick(r, NULL, 0, out + n, want - n, 1, 1000000000LL, 0, -1);
		if (rc <= 0)
			break;
		n += rc;
	}
	return n;
}

/* Zero-copy sends through rl_tick, as the kernel specifies them: the first
 * completion has the byte count and IORING_CQE_F_MORE, then a notification
 * (IORING_CQE_F_NOTIF, same user_data) whose res reports, with
 * RL_SEND_ZC_REPORT_USAGE, that loopback copied. SENDMSG_ZC the same; a
 * refused zero-copy flag fails the send with -EINVAL and still, since the
 * first completion says F_MORE, notifies; AF_UNIX refuses zero copy. */
static void test_send_zc(void)
{
	struct rl_ring *r = NULL;
	struct rl_op op;
	struct rl_cqe c[4];
	static char buf[64 << 10], got[64 << 10];
	struct iovec iov[2] = { { buf, 1000 }, { buf + 1000, 3000 } };
	struct msghdr mh;
	int sv[2], us[2], rc, n, i;

	CHECK(rl_ring_init(&r, 16, 64, ~0u) == 0, "init");
	CHECK(tcp_pair(sv) == 0, "tcp pair");
	for (i = 0; i < (int)sizeof(buf); i++)
		buf[i] = (char)(i * 7);

	memset(&op, 0, sizeof(op));
	op.opcode = RL_OP_SEND_ZC;
	op.fd = sv[0];
	op.user_data = 42;
	op.addr = (uint64_t)(uintptr_t)buf;
	op.len = sizeof(buf);
	op.aux = RL_SEND_ZC_REPORT_USAGE;
	rc = rl_tick(r, &op, 1, c, 4, 0, -1, 0, -1);
	CHECK(rc >= 0, "submit: %d", rc);
	n = rc + collect(r, c + rc, 2 - rc);
	CHECK(n == 2, "send_zc completions: %d", n);
	CHECK(c[0].user_data == 42 && c[0].res == (int)sizeof(buf) && (c[0].flags & RL_CQE_F_MORE) &&
		      !(c[0].flags & RL_CQE_F_NOTIF),
	      "first: ud %llu res %d flags %x", (unsigned long long)c[0].user_data, c[0].res, c[0].flags);
	CHECK(c[1].user_data == 42 && (c[1].flags & RL_CQE_F_NOTIF) && !(c[1].flags & RL_CQE_F_MORE),
	      "notification: ud %llu flags %x", (unsigned long long)c[1].user_data, c[1].flags);
	CHECK((unsigned)c[1].res & RL_NOTIF_USAGE_ZC_COPIED, "loopback should report a copy: res %x", c[1].res);
	for (n = 0; n < (int)sizeof(got);) {
		rc = (int)read(sv[1], got + n, sizeof(got) - n);
		CHECK(rc > 0, "peer read: %d", rc);
		n += rc;
	}
	CHECK(memcmp(got, buf, sizeof(buf)) == 0, "bytes differ");

	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = 2;
	op.opcode = RL_OP_SENDMSG_ZC;
	op.addr = (uint64_t)(uintptr_t)&mh;
	op.len = 0;
	rc = rl_tick(r, &op, 1, c, 4, 0, -1, 0, -1);
	n = rc + collect(r, c + rc, 2 - rc);
	CHECK(n == 2 && c[0].res == 4000 && (c[0].flags & RL_CQE_F_MORE) && (c[1].flags & RL_CQE_F_NOTIF),
	      "sendmsg_zc: n %d res %d flags %x/%x", n, c[0].res, c[0].flags, c[1].flags);
	CHECK(read(sv[1], got, 4000) > 0, "peer read");

	/* An invalid zero-copy flag: refused, and the F_MORE rule still tells
	 * whether a notification follows. */
	op.opcode = RL_OP_SEND_ZC;
	op.addr = (uint64_t)(uintptr_t)buf;
	op.len = 100;
	op.aux = 1u << 15;
	rc = rl_tick(r, &op, 1, c, 4, 0, -1, 0, -1);
	n = rc + collect(r, c + rc, 1 - rc);
	CHECK(n >= 1 && c[0].res == -EINVAL, "invalid zc flag: res %d", c[0].res);
	if (c[0].flags & RL_CQE_F_MORE) {
		if (n < 2)
			n += collect(r, c + n, 2 - n);
		CHECK(n == 2 && (c[1].flags & RL_CQE_F_NOTIF), "the notification F_MORE promised: %d", n);
	} else {
		CHECK(n == 1, "a notification without F_MORE: %d completions", n);
	}

	/* AF_UNIX has no zero copy. */
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, us) == 0, "socketpair");
	op.fd = us[0];
	op.aux = 0;
	rc = rl_tick(r, &op, 1, c, 4, 0, -1, 0, -1);
	n = rc + collect(r, c + rc, 1 - rc);
	CHECK(n >= 1 && c[0].res == -EOPNOTSUPP, "AF_UNIX send_zc: res %d", c[0].res);
	if (c[0].flags & RL_CQE_F_MORE) {
		if (n < 2)
			n += collect(r, c + n, 2 - n);
		CHECK(n == 2 && (c[1].flags & RL_CQE_F_NOTIF), "the notification F_MORE promised: %d", n);
	} else {
		CHECK(n == 1, "a notification without F_MORE: %d completions", n);
	}
	close(us[0]);
	close(us[1]);
	close(sv[0]);
	close(sv[1]);
	rl_ring_free(r);
	passed++;
}

int main(void)
{
	test_setup_ladder();
	test_nop_batch();
	test_batch_wait();
	test_links_whole();
	test_submit_errors();
	test_cq_overflow();
	test_buf_ring_recv();
	test_files_and_probe();
	test_probe();
	test_send_zc();
	printf("csrc: %d passed, %d failed, %d skipped\n", passed, failures, skipped);
	return failures ? 1 : 0;
}
