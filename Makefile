# ringline for Go. `make run` starts the echo example; `make test` runs the
# whole suite. Both vendor liburing first when it is not built yet.
GO ?= go
LIBURING := third_party/liburing/install/lib/liburing.a
LIBURING_TARBALL_CACHED := third_party/liburing/dl/liburing_2.9.orig.tar.gz
export CGO_ENABLED ?= 1
# The tests fail, rather than skip io_uring, when it is compiled in but
# cannot run here. On a host without io_uring: make test RINGLINE_REQUIRE_IOURING=0
export RINGLINE_REQUIRE_IOURING ?= 1
# The proxy example's test runs redis-benchmark through it to redis-server:
# make installs them (redis-tools, redis-server) and requires them.
export RINGLINE_REQUIRE_REDIS ?= 1
STATICCHECK := $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

# go does not see changes to files under csrc/ (cgo hashes only the
# package directory's own files), so a cached ringline package could keep
# stale C code: their hash, as a define nothing reads, makes it rebuild.
CSRC_HASH := $(shell cat csrc/*.c csrc/*.h 2>/dev/null | sha256sum | cut -c1-16)
export CGO_CPPFLAGS := $(strip $(CGO_CPPFLAGS) -DRINGLINE_CSRC=$(CSRC_HASH))

# `go test` links without DWARF; with it, a crash inside C in a test binary
# prints C functions, files and lines (cgosymbolizer, symbolizer_test.go).
TEST_LDFLAGS := -ldflags='-s=false -w=false'

.PHONY: all build run test test-parts test-c test-go test-race test-epoll test-nocgo test-debug test-consumer \
	vet vet-arm64 lint bench bench-connect bench-proxy clean distro-liburing run-cache test-cache bench-cache redis \
	test-nettest bench-tls openssl

all: build

$(LIBURING): vendor_liburing.sh cmd/ringline-liburing/vendor_liburing.sh
	./vendor_liburing.sh

build: $(LIBURING)
	$(GO) build ./...
	$(GO) build -o bin/echo ./examples/echo
	$(GO) build -o bin/proxy ./examples/proxy
	$(GO) build -o bin/loadgen ./examples/loadgen

run: build
	./bin/echo

# gofmt/vet/staticcheck, the C layer on its own (pinned and distribution
# liburing), the Go suite: the default build (both backends, every scenario
# once per backend), the race detector, the epoll-only build
# (-tags ringline_epoll) and a build without cgo; then the three ways a
# service builds ringline as a dependency (.ci/consumer_build.sh); then the
# cache example with redis's own programs and go-redis.
#
# The parts run three at a time (TEST_JOBS): the tests wait on sockets and
# timers about half the time, so on this machine's two CPUs three at once
# take 3.5 to 4.5 minutes where one after the other took 7. The race run, the
# longest, starts first; each part's output is printed whole when it ends.
# What they install with apt-get is installed first, one package set at a
# time (apt-get holds a lock), so call it without -j: it sets its own.
# TEST_JOBS=1 runs them one by one.
TEST_JOBS ?= 3
test: $(LIBURING) distro-liburing redis openssl
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-parts

test-parts: test-race vet vet-arm64 lint test-c test-go test-epoll test-nocgo test-debug test-nettest test-consumer test-cache

vet: $(LIBURING)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || ls *.go)); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags ringline_epoll ./...
	CGO_ENABLED=0 $(GO) vet ./...
	$(GO) vet -tags ringline_debug ./...
	cd bench && $(GO) vet ./...

# staticcheck on every build flavour, and on the bench/ module.
lint: $(LIBURING)
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags ringline_epoll ./...
	CGO_ENABLED=0 $(STATICCHECK) ./...
	cd bench && $(STATICCHECK) ./...

# The distribution's liburing headers and library, for the C test and the
# consumer build: installed with apt-get when missing (CI runs as root on a
# fresh Debian machine).
distro-liburing:
	@if [ ! -e /usr/include/liburing.h ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the distribution's liburing-dev"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liburing-dev >/dev/null; \
	  else \
	    echo "make: the distribution's liburing headers are missing: install liburing-dev (or liburing-devel)"; exit 1; \
	  fi; \
	fi

# openssl s_client is a TLS test's client (TestTLSOpenSSLClient): installed
# with apt-get when missing, like liburing-dev.
openssl:
	@if ! command -v openssl >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the distribution's openssl"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
	  else \
	    echo "make: openssl is missing (the TLS tests run openssl s_client): install it"; exit 1; \
	  fi; \
	fi

# redis-server, redis-benchmark and redis-cli (Debian's redis-server and
# redis-tools) for the proxy example's test (TestProxyRedis) and the
# cache's client tests and benchmark: installed with apt-get when missing,
# like liburing-dev.
redis:
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing redis-server and redis-tools"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  elif [ "$(RINGLINE_REQUIRE_REDIS)" = 1 ]; then \
	    echo "make: redis-server/redis-benchmark are missing: install redis-server and redis-tools, or run with RINGLINE_REQUIRE_REDIS=0"; exit 1; \
	  fi; \
	fi

csrc/rl_test: csrc/rl_test.c csrc/*.c csrc/*.h $(LIBURING)
	$(CC) -O2 -Wall -Icsrc -Ithird_party/liburing/install/include -o $@ csrc/rl_test.c csrc/rl.c $(LIBURING)

# The same test against the distribution's liburing (2.3 on Debian 12),
# where csrc/compat.h fills in or compiles out what it lacks.
csrc/rl_test_distro: csrc/rl_test.c csrc/*.c csrc/*.h | distro-liburing
	$(CC) -O2 -Wall -Icsrc -o $@ csrc/rl_test.c csrc/rl.c -luring

# RINGLINE_REQUIRE_IOURING=1 (the default here): a kernel feature a C test
# needs must be there; set it to 0 on a host that lacks one to see SKIP lines.
test-c: csrc/rl_test csrc/rl_test_distro
	./csrc/rl_test
	./csrc/rl_test_distro

# arm64 (weak memory order): vet and build the pure-Go flavours, and the
# cgo one when an aarch64 C cross compiler is installed (.ci/run installs
# gcc-aarch64-linux-gnu). Linking a cgo binary would need an arm64 liburing.a.
AARCH64_CC ?= aarch64-linux-gnu-gcc
vet-arm64:
	GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./...
	GOARCH=arm64 CGO_ENABLED=0 $(GO) vet -tags ringline_epoll ./...
	GOARCH=arm64 CGO_ENABLED=0 $(GO) build ./...
	@if command -v $(AARCH64_CC) >/dev/null; then \
	  echo "GOARCH=arm64 CGO_ENABLED=1 CC=$(AARCH64_CC) $(GO) vet ./... && $(GO) build ."; \
	  GOARCH=arm64 CGO_ENABLED=1 CC=$(AARCH64_CC) $(GO) vet ./... && \
	  GOARCH=arm64 CGO_ENABLED=1 CC=$(AARCH64_CC) $(GO) build . ; \
	else echo "SKIP arm64 cgo vet/build: no $(AARCH64_CC) (apt-get install gcc-aarch64-linux-gnu)"; fi

test-go: $(LIBURING) | redis openssl
	$(GO) test $(TEST_LDFLAGS) -count=1 -timeout 10m ./...

test-race: $(LIBURING) | redis openssl
	$(GO) test $(TEST_LDFLAGS) -race -count=1 -timeout 10m ./...

# io_uring and all cgo compiled out: Auto runs on epoll, IOUring is refused.
test-epoll: | redis openssl
	$(GO) build -tags ringline_epoll ./...
	$(GO) test -tags ringline_epoll -count=1 -timeout 10m ./...

test-nocgo: | redis openssl
	CGO_ENABLED=0 $(GO) build ./...
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m ./...

# golang.org/x/net/nettest.TestConn against the net.Conn view, from the
# bench/ module (which keeps x/net out of ringline's module graph), under
# the race detector as nettest recommends.
test-nettest: $(LIBURING)
	cd bench && $(GO) test -race -count=1 -timeout 5m ./nettestconn/

# The debug build (-tags ringline_debug) poisons memory ringline takes back;
# its own tests check the poisoning.
test-debug: $(LIBURING)
	$(GO) test -tags ringline_debug -count=1 -run Debug -timeout 5m .

# A module outside the repository builds ringline from a read-only copy and
# echoes through it: distribution liburing, the pinned 2.9 through
# cmd/ringline-liburing (built once into third_party/consumer-liburing), no
# cgo, and the build error without liburing.
test-consumer: $(LIBURING) | distro-liburing
	LIBURING_CACHE=$(CURDIR)/third_party/consumer-liburing \
	  LIBURING_TARBALL=$(if $(wildcard $(LIBURING_TARBALL_CACHED)),$(CURDIR)/$(LIBURING_TARBALL_CACHED)) \
	  GO=$(GO) ./.ci/consumer_build.sh

# The figures in docs/BENCHMARKS.md (a few minutes; not part of make test).
# The gnet peer is built from the bench/ module, which keeps gnet out of
# ringline's own module graph.
bench: $(LIBURING) bin/cepoll
	cd bench && $(GO) build -o ../bin/gnetecho ./gnetecho
	RINGLINE_BENCH_GNET=$(CURDIR)/bin/gnetecho $(GO) test -run '^$$' -bench PipelinedEcho -benchtime 200000x .
	RINGLINE_BENCH_GNET=$(CURDIR)/bin/gnetecho $(GO) test -run '^$$' -bench PingPongLatency -benchtime 20000x .
	$(GO) test -run '^$$' -bench IdleConnRSS -benchtime 1x .
	RINGLINE_BENCH_GNET=$(CURDIR)/bin/gnetecho RINGLINE_BENCH_CEPOLL=$(CURDIR)/bin/cepoll \
	  $(GO) test -run '^$$' -bench LargeEcho -benchtime 50000x .
	$(GO) test -run '^$$' -bench ZeroCopySend -benchtime 20000x .

# The plain-C epoll echo server the epoll backend is measured against.
bin/cepoll: bench/cepoll/cepoll.c
	@mkdir -p bin
	$(CC) -O2 -Wall -o $@ bench/cepoll/cepoll.c

# The TLS figures (docs/BENCHMARKS.md, TLS): echo at 64 B pipelined and at
# 16 KiB, and full handshakes, against Go's net + crypto/tls.
bench-tls: $(LIBURING)
	$(GO) test -run '^$$' -bench 'TLSEcho//size=64' -benchtime 200000x -count 5 .
	$(GO) test -run '^$$' -bench 'TLSEcho//size=16384' -benchtime 20000x -count 5 .
	$(GO) test -run '^$$' -bench TLSHandshake -benchtime 5000x -count 5 .

# The cache example (examples/cache). `make run-cache` serves RESP on
# 127.0.0.1:7379; flags: ./bin/cache -h.
run-cache: $(LIBURING)
	$(GO) build -o bin/cache ./examples/cache
	./bin/cache

# The cache's tests with real redis programs (the redistools tag) and the
# go-redis interop tests of the bench module (a module of its own, so
# go-redis and redcon stay out of ringline's module graph). The parser's
# fuzz corpus runs in every plain go test above.
test-cache: $(LIBURING) | redis
	$(GO) vet -tags redistools ./examples/cache/...
	$(GO) test -tags redistools -count=1 -timeout 5m -run 'RedisCLI|RedisBenchmark|Differential' ./examples/cache/server
	cd bench && $(GO) vet ./cache/... && $(GO) test -count=1 -timeout 5m ./cache/...

# The cache's figures: ringline (io_uring, epoll), redis-server and the
# redcon peer under redis-benchmark, pinned with taskset (minutes; not part
# of make test). BENCH_CACHE_FLAGS=-h lists what can change.
BENCH_CACHE_FLAGS ?= -n 2000000
bench-cache: $(LIBURING) | redis
	$(GO) build -o bin/cache ./examples/cache
	cd bench && $(GO) build -o ../bin/cache-redcon ./cache/redcon && $(GO) build -o ../bin/benchcache ./cache/cmd/benchcache
	./bin/benchcache $(BENCH_CACHE_FLAGS)

# Issue 8's figures (docs/BENCHMARKS.md §5; not part of make test):
# outbound connects per second against net.Dial, socket creation, a shared
# Unix listener; and the proxy against Go net and gnet proxies.
bench-connect: $(LIBURING)
	$(GO) test -run '^$$' -bench 'Connect$$' -benchtime 20000x .
	$(GO) test -run '^$$' -bench SocketCreate .
	$(GO) test -run '^$$' -bench UnixListener -benchtime 20000x .

bench-proxy: $(LIBURING)
	$(GO) test -run '^$$' -bench 'Proxy$$' -benchtime 1000000x -timeout 30m .

clean:
	rm -rf bin csrc/rl_test csrc/rl_test_distro
