/*
 * timedwait — what a timeout on a blocking epoll wait costs the waiting
 * thread, on this host. Two threads pinned to CPUs 0 and 1 ping-pong
 * through two eventfds; the first waits with epoll_wait(-1), or with
 * epoll_pwait2 and the timeout given in nanoseconds, and prints its own CPU
 * time (getrusage RUSAGE_THREAD) and the wall time per round trip, and how
 * many of its waits timed out before the peer's answer came.
 * docs/BENCHMARKS.md §7.2 has the figures and why they matter.
 *
 *   gcc -O2 -o /tmp/timedwait bench/timedwait/timedwait.c -lpthread
 *   for t in -1 50000 200000 500000 1000000 5000000 60000000; do
 *     /tmp/timedwait $t
 *   done
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 100000

static int to_main, to_peer;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity");
}

static int watch(int fd)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int ep = epoll_create1(0);

	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
		die("epoll");
	return ep;
}

static void *peer(void *arg)
{
	struct epoll_event ev;
	int ep = watch(to_peer);
	uint64_t v;

	(void)arg;
	pin(1);
	for (int i = 0; i < ROUNDS;) {
		if (epoll_wait(ep, &ev, 1, -1) < 1 || read(to_peer, &v, 8) != 8)
			continue; /* not this round's token yet */
		i++;
		v = 1;
		if (write(to_main, &v, 8) != 8)
			die("write");
	}
	return NULL;
}

static double usec(struct timeval tv) { return tv.tv_sec * 1e6 + tv.tv_usec; }

int main(int argc, char **argv)
{
	long timeout_ns = argc > 1 ? atol(argv[1]) : -1, timeouts = 0;
	struct timespec a, b, ts = { timeout_ns / 1000000000, timeout_ns % 1000000000 };
	struct rusage r0, r1;
	struct epoll_event ev;
	pthread_t t;
	uint64_t v;
	int ep;

	to_main = eventfd(0, EFD_NONBLOCK);
	to_peer = eventfd(0, EFD_NONBLOCK);
	if (to_main < 0 || to_peer < 0)
		die("eventfd");
	if (pthread_create(&t, NULL, peer, NULL))
		die("pthread_create");
	pin(0);
	ep = watch(to_main);
	getrusage(RUSAGE_THREAD, &r0);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (int i = 0; i < ROUNDS; i++) {
		int n;

		v = 1;
		if (write(to_peer, &v, 8) != 8)
			die("write");
		for (;;) { /* a wait that timed out waits again */
			if (timeout_ns < 0)
				n = epoll_wait(ep, &ev, 1, -1);
			else
				n = syscall(SYS_epoll_pwait2, ep, &ev, 1, &ts, NULL, 0);
			if (n < 0)
				die("epoll wait");
			if (n == 0)
				timeouts++;
			if (n > 0 && read(to_main, &v, 8) == 8)
				break;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	getrusage(RUSAGE_THREAD, &r1);
	printf("timeout %ld ns: %.2f us CPU and %.2f us wall per round trip, %ld of %d waits timed out\n",
	       timeout_ns, (usec(r1.ru_utime) - usec(r0.ru_utime) + usec(r1.ru_stime) - usec(r0.ru_stime)) / ROUNDS,
	       ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / ROUNDS, timeouts, ROUNDS);
	pthread_join(t, NULL);
	return 0;
}
