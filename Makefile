# ringline for Go. `make run` starts the echo example; `make test` runs the
# whole suite. Both vendor liburing first when it is not built yet.
GO ?= go
LIBURING := third_party/liburing/install/lib/liburing.a
export CGO_ENABLED ?= 1

.PHONY: all build run test test-c test-go test-race test-epoll test-nocgo vet vet-arm64 bench clean

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
test: $(LIBURING) vet vet-arm64 test-c test-go test-race test-epoll test-nocgo

vet: $(LIBURING)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || ls *.go)); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags ringline_epoll ./...
	CGO_ENABLED=0 $(GO) vet ./...

csrc/rl_test: csrc/rl_test.c csrc/rl.c csrc/rl.h $(LIBURING)
	$(CC) -O2 -Wall -Icsrc -Ithird_party/liburing/install/include -o $@ csrc/rl_test.c csrc/rl.c $(LIBURING)

# RINGLINE_REQUIRE_IOURING=1 (the default here): a kernel feature a C test
# needs must be there; set it to 0 on a host that lacks one to see SKIP lines.
test-c: csrc/rl_test
	RINGLINE_REQUIRE_IOURING=$${RINGLINE_REQUIRE_IOURING:-1} ./csrc/rl_test

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

clean:
	rm -rf bin csrc/rl_test
