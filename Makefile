# ringline for Go. `make run` starts the echo example; `make test` runs the
# whole suite. Both vendor liburing first when it is not built yet.
GO ?= go
LIBURING := third_party/liburing/install/lib/liburing.a
export CGO_ENABLED ?= 1

.PHONY: all build run test test-c test-go test-race test-epoll test-nocgo vet bench clean \
	run-cache test-cache bench-cache redis-tools

all: build

$(LIBURING): vendor_liburing.sh
	./vendor_liburing.sh

build: $(LIBURING)
	$(GO) build ./...
	$(GO) build -o bin/echo ./examples/echo

run: build
	./bin/echo

# The C layer on its own, then the Go suite: the default build (both
# backends, every scenario once per backend), the race detector, the
# epoll-only build (-tags ringline_epoll) and a build without cgo.
test: $(LIBURING) vet test-c test-go test-race test-epoll test-nocgo test-cache

vet: $(LIBURING)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || ls *.go)); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags ringline_epoll ./...
	CGO_ENABLED=0 $(GO) vet ./...

csrc/rl_test: csrc/rl_test.c csrc/rl.c csrc/rl.h $(LIBURING)
	$(CC) -O2 -Wall -Icsrc -Ithird_party/liburing/install/include -o $@ csrc/rl_test.c csrc/rl.c $(LIBURING)

test-c: csrc/rl_test
	./csrc/rl_test

test-go: $(LIBURING)
	$(GO) test -count=1 -timeout 10m ./...

test-race: $(LIBURING)
	$(GO) test -race -count=1 -timeout 10m ./...

# io_uring and all cgo compiled out: Auto runs on epoll, IOUring is refused.
test-epoll:
	$(GO) build -tags ringline_epoll ./...
	$(GO) test -tags ringline_epoll -count=1 -timeout 10m ./...

test-nocgo:
	CGO_ENABLED=0 $(GO) build ./...
	CGO_ENABLED=0 $(GO) test -count=1 -timeout 10m ./...

# The figures in docs/BENCHMARKS.md (a few minutes; not part of make test).
bench: $(LIBURING)
	$(GO) test -run '^$$' -bench PipelinedEcho -benchtime 200000x .
	$(GO) test -run '^$$' -bench PingPongLatency -benchtime 20000x .
	$(GO) test -run '^$$' -bench IdleConnRSS -benchtime 1x .

# The cache example (examples/cache). `make run-cache` serves RESP on
# 127.0.0.1:7379; flags: ./bin/cache -h.
run-cache: $(LIBURING)
	$(GO) build -o bin/cache ./examples/cache
	./bin/cache

# redis-cli, redis-benchmark and redis-server (Debian's redis-tools and
# redis-server packages) drive the cache's client tests and its benchmark.
redis-tools:
	@if ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null || \
	    ! command -v redis-server >/dev/null; then \
	  echo "installing redis-tools and redis-server (Debian packages)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools redis-server; \
	fi

# The cache's tests with real redis programs (the redistools tag) and the
# go-redis interop tests of the bench module (a module of its own, so
# go-redis and redcon stay out of ringline's module graph). The parser's
# fuzz corpus runs in every plain go test above.
test-cache: $(LIBURING) redis-tools
	$(GO) vet -tags redistools ./examples/cache/...
	$(GO) test -tags redistools -count=1 -timeout 5m -run 'RedisCLI|RedisBenchmark|Differential' ./examples/cache/server
	cd bench && $(GO) vet ./cache/... && $(GO) test -count=1 -timeout 5m ./cache/...

# The cache's figures: ringline (io_uring, epoll), redis-server and the
# redcon peer under redis-benchmark, pinned with taskset (minutes; not part
# of make test). BENCH_CACHE_FLAGS=-h lists what can change.
BENCH_CACHE_FLAGS ?= -n 2000000
bench-cache: $(LIBURING) redis-tools
	$(GO) build -o bin/cache ./examples/cache
	cd bench && $(GO) build -o ../bin/cache-redcon ./cache/redcon && $(GO) build -o ../bin/benchcache ./cache/cmd/benchcache
	./bin/benchcache $(BENCH_CACHE_FLAGS)

clean:
	rm -rf bin csrc/rl_test
