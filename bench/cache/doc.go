// Package cache holds what the cache example (examples/cache in the
// ringline module) needs from third-party modules, kept out of ringline's
// own module graph:
//
//   - interop tests with github.com/redis/go-redis/v9 (this package's
//     tests; `make test` runs them);
//   - redcon/, the same cache (same store and command engine) served by
//     github.com/tidwall/redcon on Go's net package: a benchmark peer;
//   - cmd/benchcache, which `make bench-cache` runs: ringline (io_uring
//     and epoll), redis-server and the redcon peer side by side under
//     redis-benchmark, pinned with taskset, reporting requests per
//     server-CPU-second, throughput and latency.
package cache
