/*
 * cepoll — the plain-C epoll echo server ringline's benchmarks compare the
 * epoll backend against (bench_test.go starts it as a child process; `make
 * bench` builds it into bin/cepoll). One thread, no library: what a careful
 * C programmer writes for an echo, and nothing more.
 *
 *   - Edge-triggered epoll (EPOLLIN | EPOLLRDHUP | EPOLLET) on non-blocking
 *     sockets with TCP_NODELAY; 256 events per epoll_wait.
 *   - Readable: read(2) into one 64 KiB buffer (gnet's default read buffer)
 *     and write(2) what was read straight back; read again only when the
 *     last read filled the buffer (a short read drained the socket, and
 *     new data brings a new edge).
 *   - A write the socket does not take whole: the rest is kept for the
 *     connection (which stops reading, so the peer is throttled by TCP) and
 *     flushed on EPOLLOUT.
 *
 * Protocol on stdio, as bench/gnetecho's: it prints "cepoll: listening on
 * ADDR" once serving; each "usage" line read from stdin is answered with
 * "usage UTIME_NS STIME_NS 0" (getrusage of this process; no heap
 * allocation count); at the end of stdin it exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (64 << 10)
#define EVENTS 256

struct conn {
	char *pend; /* bytes the socket did not take yet */
	size_t npend, cap;
	int fd;
};

static struct conn **conns; /* by fd */
static int nconns;
static char buf[BUF];
static int epfd;

static void die(const char *what)
{
	fprintf(stderr, "cepoll: %s: %s\n", what, strerror(errno));
	exit(1);
}

static struct conn *conn_of(int fd)
{
	if (fd >= nconns) {
		int n = nconns ? nconns : 64;

		while (n <= fd)
			n *= 2;
		conns = realloc(conns, n * sizeof(*conns));
		if (!conns)
			die("realloc");
		memset(conns + nconns, 0, (n - nconns) * sizeof(*conns));
		nconns = n;
	}
	return conns[fd];
}

static void drop(struct conn *c)
{
	conns[c->fd] = NULL;
	close(c->fd);
	free(c->pend);
	free(c);
}

static void watch(struct conn *c, int out)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET | (out ? EPOLLOUT : 0), .data.fd = c->fd };

	if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev))
		die("epoll_ctl mod");
}

/* Writes p whole or keeps the rest; returns -1 when the connection died. */
static int send_all(struct conn *c, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(c->fd, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				return -1;
			if (c->npend + n > c->cap) {
				c->cap = c->npend + n;
				c->pend = realloc(c->pend, c->cap);
				if (!c->pend)
					die("realloc");
			}
			memmove(c->pend + c->npend, p, n); /* p may lie in pend (on_writable) */
			c->npend += n;
			watch(c, 1);
			return 0;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void on_readable(struct conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->npend)
			return; /* backpressure: resume after EPOLLOUT */
		n = read(c->fd, buf, BUF);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0 || send_all(c, buf, (size_t)n) < 0) {
			drop(c);
			return;
		}
		if (n < BUF)
			return;
	}
}

/* Flushes the kept bytes; send_all keeps what is still refused at the
 * front of pend again. */
static void on_writable(struct conn *c)
{
	size_t n = c->npend;

	c->npend = 0;
	if (send_all(c, c->pend, n) < 0) {
		drop(c);
		return;
	}
	if (c->npend == 0) {
		watch(c, 0);
		on_readable(c); /* what arrived while it waited brought no new edge */
	}
}

static void usage_line(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	printf("usage %lld %lld 0\n", (long long)ru.ru_utime.tv_sec * 1000000000LL + ru.ru_utime.tv_usec * 1000LL,
	       (long long)ru.ru_stime.tv_sec * 1000000000LL + ru.ru_stime.tv_usec * 1000LL);
	fflush(stdout);
}

int main(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	struct epoll_event ev, events[EVENTS];
	char line[64];
	size_t nline = 0;
	int lfd, one = 1;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1024) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &len))
		die("listen");
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		die("epoll_create1");
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev))
		die("epoll_ctl listener");
	ev.data.fd = 0;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev))
		die("epoll_ctl stdin");
	printf("cepoll: listening on %s:%d\n", inet_ntoa(sa.sin_addr), ntohs(sa.sin_port));
	fflush(stdout);

	for (;;) {
		int n = epoll_wait(epfd, events, EVENTS, -1), i;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			struct conn *c;

			if (fd == 0) {
				ssize_t r = read(0, line + nline, sizeof(line) - 1 - nline);

				if (r <= 0)
					return 0; /* end of stdin: stop */
				nline += (size_t)r;
				line[nline] = 0;
				while (strchr(line, '\n')) {
					char *nl = strchr(line, '\n');

					*nl = 0;
					if (strcmp(line, "usage") == 0)
						usage_line();
					nline -= (size_t)(nl + 1 - line);
					memmove(line, nl + 1, nline + 1);
				}
				continue;
			}
			if (fd == lfd) {
				int cfd;

				while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
					setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					conn_of(cfd);
					c = calloc(1, sizeof(*c));
					if (!c)
						die("calloc");
					c->fd = cfd;
					conns[cfd] = c;
					ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
					ev.data.fd = cfd;
					if (epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev))
						die("epoll_ctl add");
				}
				continue;
			}
			c = conn_of(fd);
			if (!c)
				continue;
			if (events[i].events & (EPOLLERR | EPOLLHUP)) {
				drop(c);
				continue;
			}
			if ((events[i].events & EPOLLOUT) && c->npend) {
				on_writable(c);
				if (!conn_of(fd))
					continue;
			}
			if (events[i].events & (EPOLLIN | EPOLLRDHUP))
				on_readable(c);
		}
	}
}
