/*
 * rl_test.c — tests of the C layer on its own: ring setup and the flag
 * retry ladder, batched NOPs through rl_tick, a provided buffer ring fed by
 * a multishot recv on a socketpair, the sparse fixed-file table, the
 * opcode probe and the kernel feature probe. Exits non-zero on the first failure.
 */
#include "rl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int failures, passed;

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

static void test_setup_ladder(void)
{
	struct rl_ring *r = NULL;
	int rc = rl_ring_init(&r, 64, 256, ~0u);

	CHECK(rc == 0, "rl_ring_init: %d", rc);
	CHECK(rl_ring_setup_flags(r) & RL_SETUP_SINGLE_ISSUER, "expected SINGLE_ISSUER on 6.x");
	rl_ring_free(r);

	/* Forbid SINGLE_ISSUER/DEFER_TASKRUN: the ladder must land on COOP. */
	rc = rl_ring_init(&r, 64, 256, ~(unsigned)(RL_SETUP_SINGLE_ISSUER | RL_SETUP_DEFER_TASKRUN));
	CHECK(rc == 0, "rl_ring_init masked: %d", rc);
	CHECK(!(rl_ring_setup_flags(r) & RL_SETUP_DEFER_TASKRUN), "DEFER_TASKRUN used despite mask");
	CHECK(rl_ring_setup_flags(r) & RL_SETUP_COOP_TASKRUN, "expected COOP_TASKRUN fallback");
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
	/* 200 ops through a 64-entry SQ: rl_tick flushes when the SQ fills. */
	rc = rl_tick(r, ops, 200, cqes, 256, 1, 1000000000LL, 0);
	CHECK(rc >= 0, "tick: %d", rc);
	got = (unsigned)rc;
	for (i = 0; i < got; i++)
		seen += cqes[i].user_data - 1000;
	while (got < 200) {
		rc = rl_tick(r, NULL, 0, cqes, 256, 1, 1000000000LL, 0);
		CHECK(rc > 0, "tick drain: %d after %u", rc, got);
		for (i = 0; i < (unsigned)rc; i++)
			seen += cqes[i].user_data - 1000;
		got += (unsigned)rc;
	}
	CHECK(got == 200, "got %u completions", got);
	CHECK(seen == 199 * 200 / 2, "user_data sum %llu", (unsigned long long)seen);
	CHECK(rl_ring_enters(r) <= 6, "enters %llu for 200 nops", (unsigned long long)rl_ring_enters(r));
	/* A batch wait (min_wait) for 8 completions with only one coming
	 * returns that one once the minimum wait is over, long before the
	 * 10 s timeout. */
	if (rl_has_min_timeout(r)) {
		struct timespec t0, t1;
		struct rl_op nop;

		memset(&nop, 0, sizeof(nop));
		nop.user_data = 77;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		rc = rl_tick(r, &nop, 1, cqes, 256, 8, 10000000000LL, 1000);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		CHECK(rc == 1 && cqes[0].user_data == 77, "batch wait: rc %d", rc);
		CHECK(t1.tv_sec - t0.tv_sec < 5, "batch wait blocked for the full timeout");
	}
	/* Idle wait with a timeout returns 0 completions, not an error. */
	rc = rl_tick(r, NULL, 0, cqes, 256, 1, 10000000LL, 0);
	CHECK(rc == 0, "idle tick: %d", rc);
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
	void *br;

	CHECK(mem != MAP_FAILED, "mmap");
	CHECK(rl_ring_init(&r, 32, 128, ~0u) == 0, "init");
	br = rl_buf_ring_setup(r, 4, 0, mem, 4096, &err);
	CHECK(br != NULL, "buf ring: %d", err);
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair");

	memset(&op, 0, sizeof(op));
	op.opcode = RL_OP_RECV_MULTI;
	op.fd = sv[0];
	op.user_data = 7;
	rc = rl_tick(r, &op, 1, cqes, 16, 0, -1, 0);
	submitted = rl_last_submitted(r);
	CHECK(rc >= 0 && submitted == 1, "arm recv: rc %d sub %u", rc, submitted);
	CHECK(write(sv[1], "ping", 4) == 4, "write");
	rc = rl_tick(r, NULL, 0, cqes, 16, 1, 1000000000LL, 0);
	CHECK(rc == 1, "recv completions: %d", rc);
	CHECK(cqes[0].user_data == 7 && cqes[0].res == 4, "cqe ud %llu res %d",
	      (unsigned long long)cqes[0].user_data, cqes[0].res);
	CHECK(cqes[0].flags & 1 /* IORING_CQE_F_BUFFER */, "no buffer flag");
	CHECK(cqes[0].flags & 2 /* IORING_CQE_F_MORE */, "multishot not armed");
	{
		unsigned bid = cqes[0].flags >> 16;
		CHECK(memcmp((char *)mem + bid * 4096, "ping", 4) == 0, "buffer %u content", bid);
	}
	close(sv[1]);
	rc = rl_tick(r, NULL, 0, cqes, 16, 1, 1000000000LL, 0);
	CHECK(rc == 1 && cqes[0].res == 0 && !(cqes[0].flags & 2), "EOF ends multishot: rc %d res %d", rc, cqes[0].res);
	close(sv[0]);
	rl_ring_free(r);
	munmap(mem, 4 * 4096);
	passed++;
}

static void test_files_and_probe(void)
{
	struct rl_ring *r = NULL;
	unsigned char ops[256];
	int rc;

	CHECK(rl_ring_init(&r, 8, 0, ~0u) == 0, "init");
	rc = rl_files_sparse(r, 128);
	CHECK(rc == 0, "files sparse: %d", rc);
	rl_ring_free(r);

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
	int rc = rl_probe(&info, 64, ~0u);

	CHECK(rc == 0 && info.setup_err == 0, "rl_probe: %d", rc);
	CHECK(info.setup_flags & RL_SETUP_SINGLE_ISSUER, "expected SINGLE_ISSUER on 6.x");
	CHECK(info.buf_ring_err == 0, "buffer ring: %d", info.buf_ring_err);
	CHECK(info.recv_multishot == 1, "multishot recv: %d", info.recv_multishot);
	CHECK(info.accept_multishot == 1, "multishot accept: %d", info.accept_multishot);
	CHECK(info.ops[rl_kernel_opcode(RL_OP_RECV_MULTI)], "RECV unsupported");
	CHECK(info.send_zc == 1, "SEND_ZC expected on 6.x");

	/* The flag mask reaches the ladder: no DEFER_TASKRUN when refused. */
	rc = rl_probe(&info, 64, ~(unsigned)RL_SETUP_DEFER_TASKRUN);
	CHECK(rc == 0 && !(info.setup_flags & RL_SETUP_DEFER_TASKRUN), "masked probe: %d flags %x", rc, info.setup_flags);
	CHECK(info.recv_multishot == 1, "multishot recv on a COOP ring: %d", info.recv_multishot);

	/* A size the kernel refuses is reported, not fatal. */
	rc = rl_probe(&info, 0, ~0u);
	CHECK(rc < 0 && info.setup_err == rc, "entries=0 should fail, got %d", rc);
	passed++;
}

int main(void)
{
	test_setup_ladder();
	test_nop_batch();
	test_buf_ring_recv();
	test_files_and_probe();
	test_probe();
	printf("csrc: %d passed, %d failed\n", passed, failures);
	return failures ? 1 : 0;
}
