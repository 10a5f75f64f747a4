/*
 * syscallcost — what one system call costs on this host, so that a count of
 * syscalls per message can be turned into time. Times, on one thread, a
 * million calls each of getppid(2) (the cheapest call there is: entry and
 * exit and nothing else), epoll_wait(2) with a zero timeout on an empty set
 * (the look a worker makes before it parks), and the same on a set holding
 * one ready eventfd (a look that finds an event). Prints nanoseconds per
 * call. docs/BENCHMARKS.md §7.4 has the figures and why they matter.
 *
 *   gcc -O2 -o /tmp/syscallcost bench/syscallcost/syscallcost.c
 *   taskset -c 0 /tmp/syscallcost
 */
#define _GNU_SOURCE /* syscall(2) */
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CALLS 1000000

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(void)
{
	struct epoll_event ev[8];
	int empty = epoll_create1(0), ready = epoll_create1(0);
	int efd = eventfd(1, 0); /* readable from the start, and stays so */
	if (empty < 0 || ready < 0 || efd < 0) {
		perror("setup");
		return 1;
	}
	struct epoll_event add = {.events = EPOLLIN, .data.fd = efd};
	if (epoll_ctl(ready, EPOLL_CTL_ADD, efd, &add) < 0) {
		perror("epoll_ctl");
		return 1;
	}

	double t0 = now_ns();
	for (int i = 0; i < CALLS; i++)
		syscall(SYS_getppid);
	double t1 = now_ns();
	for (int i = 0; i < CALLS; i++)
		epoll_wait(empty, ev, 8, 0);
	double t2 = now_ns();
	for (int i = 0; i < CALLS; i++)
		if (epoll_wait(ready, ev, 8, 0) != 1)
			abort();
	double t3 = now_ns();

	printf("getppid                          %6.0f ns/call\n", (t1 - t0) / CALLS);
	printf("epoll_wait(timeout 0), empty set %6.0f ns/call\n", (t2 - t1) / CALLS);
	printf("epoll_wait(timeout 0), one ready %6.0f ns/call\n", (t3 - t2) / CALLS);
	return 0;
}
