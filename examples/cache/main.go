// Command cache is a RESP2 cache server on ringline that redis clients
// (redis-cli, redis-benchmark, go-redis) use as they would redis-server.
// See README.md for the commands, the design and the measurements.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/cache/resp"
	"github.com/ringline-go/ringline/examples/cache/server"
	"github.com/ringline-go/ringline/examples/internal/stop"
)

// parseSize reads a byte count with an optional k, m, g suffix (powers of
// 1024, as redis's config does for memory sizes).
func parseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:7379", "listen address")
	workers := flag.Int("workers", 0, "worker loops (0: one per CPU)")
	backend := flag.String("backend", "auto", "backend: auto, iouring or epoll")
	maxMemory := flag.String("maxmemory", "0", "memory bound for keys and values, e.g. 100mb; 0 is unbounded (keys are evicted approximately LRU)")
	maxValue := flag.String("max-value", strconv.Itoa(resp.DefaultMaxBulk), "largest bulk argument accepted (redis's proto-max-bulk-len), e.g. 1mb")
	batchWait := flag.Duration("batch-wait", 0, "io_uring batch wait (ringline Config.BatchWait), e.g. 50us; 0 is off")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof)")
	grace := flag.Duration("grace", 5*time.Second, "on SIGINT/SIGTERM, how long to let connections finish before exiting anyway")
	flag.Parse()

	o := server.Options{Addr: *addr, Workers: *workers, Ring: ringline.Config{BatchWait: *batchWait}}
	switch *backend {
	case "auto":
		o.Backend = ringline.Auto
	case "iouring":
		o.Backend = ringline.IOUring
	case "epoll":
		o.Backend = ringline.Epoll
	default:
		log.Fatalf("cache: unknown -backend %q", *backend)
	}
	var err error
	if o.MaxMemory, err = parseSize(*maxMemory); err != nil {
		log.Fatalf("cache: -maxmemory: %v", err)
	}
	if o.MaxValue, err = parseSize(*maxValue); err != nil || o.MaxValue == 0 {
		log.Fatalf("cache: -max-value: must be a positive size, got %q", *maxValue)
	}
	srv, err := server.Start(o)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			log.Fatalf("%v\ncache: %s is taken (is redis-server or another cache running there?); pick another -addr", err, *addr)
		}
		log.Fatal(err)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	rt := srv.Runtime()
	sig := stop.Signals()
	fmt.Printf("cache: listening on %s with %d workers; backend %s: %s\n", srv.Addr(), rt.Workers(), rt.Backend(), rt.Features())
	stop.Wait("cache", sig, rt, *grace)
	t := ringline.Total(rt.Stats())
	fmt.Printf("cache: stopped; accepted %d, closed %d, commands %d, bytes in %d out %d\n",
		t.Accepted, t.Closed, srv.Commands(), t.BytesIn, t.BytesOut)
}
