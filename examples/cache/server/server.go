// Package server is the cache example: a RESP2 server on ringline, over the
// shared store in package store, with the command set in Engine.
//
// Each connection is a ringline task. It parses requests straight out of
// the receive buffer (WithData; arguments are slices of it), executes a
// whole pipelined batch, and sends the batch's replies with one Send. See
// the example's README for the design and its measurements.
package server

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/cache/resp"
	"github.com/ringline-go/ringline/examples/cache/store"
)

// Options configures a server. Zero fields take defaults.
type Options struct {
	// Addr is the listen address. Default 127.0.0.1:7379.
	Addr string
	// Workers is the number of ringline workers (default one per CPU).
	Workers int
	// Backend is the ringline backend (default Auto).
	Backend ringline.Backend
	// MaxMemory bounds the store's estimated memory; 0 is unbounded.
	MaxMemory int64
	// MaxValue is the largest bulk argument accepted (redis's
	// proto-max-bulk-len). Default 512 MiB.
	MaxValue int64
	// Shards is the store's shard count (a power of two, default 256).
	Shards int
	// Ring overrides ringline Config fields other than Workers and
	// Backend (zero fields keep the server's defaults).
	Ring ringline.Config
	// Logger receives connection notes (default slog.Default()).
	Logger *slog.Logger
}

// Tuning of the connection task; see the README for why.
const (
	// flushAt stops a batch once this many reply bytes wait, so a deep
	// pipeline is answered in pieces instead of one huge buffer.
	flushAt = 64 << 10
	// sendChunk is the most one Send copies into the send pool (a Send is
	// all or nothing, so a large reply goes in pieces).
	sendChunk = 64 << 10
	// maxUnacked is how many reply bytes a connection may have queued
	// before its task waits for the kernel to take some: the backpressure
	// that throttles a client that pipelines without reading.
	maxUnacked = 256 << 10
	// recvLimit is ringline's MaxRecvAccumulator for the server (unless
	// Options.Ring sets one): what a connection buffers while its task is
	// not reading (it then pauses receiving). A request that needs more
	// than half of it is taken over by the task instead, up to the query
	// limit.
	recvLimit = 1 << 20
	// replyKeep is the reply buffer capacity kept between batches: a
	// batch's replies stop growing near flushAt, and an idle connection
	// should not keep what one huge reply needed.
	replyKeep = flushAt + 16<<10
)

// Server is a running cache server.
type Server struct {
	rt       atomic.Pointer[ringline.Runtime]
	eng      *Engine
	log      *slog.Logger
	maxBulk  int64
	maxQuery int
	bigFrame int // requests needing more are taken over by the task

	mu       sync.Mutex
	counters map[int]*atomic.Uint64 // commands, per worker
}

// Start launches the server.
func Start(o Options) (*Server, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:7379"
	}
	if o.MaxValue <= 0 {
		o.MaxValue = resp.DefaultMaxBulk
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	cfg := o.Ring
	cfg.Workers, cfg.Backend, cfg.Logger = o.Workers, o.Backend, o.Logger
	if cfg.MaxRecvAccumulator == 0 {
		cfg.MaxRecvAccumulator = recvLimit
	}
	if cfg.SendPoolSlots == 0 {
		// Address space, touched only as replies queue: room for a few
		// hundred connections at maxUnacked each per worker.
		cfg.SendPoolSlots = 8192
	}
	st := store.New(store.Options{Shards: o.Shards, MaxMemory: o.MaxMemory})
	s := &Server{eng: NewEngine(st, o.MaxValue), log: o.Logger, maxBulk: o.MaxValue,
		counters: make(map[int]*atomic.Uint64)}
	// A request may carry two maximal values (MSET k v k v) and change;
	// redis's client-query-buffer-limit plays this role.
	s.maxQuery = int(min(2*o.MaxValue+1<<20, 1<<40))
	s.bigFrame = cfg.MaxRecvAccumulator / 2
	s.eng.Info = s.info
	s.eng.CountCommands = s.Commands
	rt, err := ringline.New(cfg).Bind(o.Addr).Launch(func(id int) ringline.AsyncEventHandler {
		return &handler{srv: s, worker: id, commands: s.newCounter(id)}
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	s.rt.Store(rt)
	return s, nil
}

// newCounter gives worker id its own command counter: a counter shared by
// all workers would bounce its cache line between cores on every batch.
func (s *Server) newCounter(id int) *atomic.Uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := new(atomic.Uint64)
	s.counters[id] = c
	return c
}

// Addr returns the bound address.
func (s *Server) Addr() net.Addr { return s.rt.Load().Addr() }

// Runtime returns the ringline runtime (for Stats).
func (s *Server) Runtime() *ringline.Runtime { return s.rt.Load() }

// Engine returns the command engine (and through it the store).
func (s *Server) Engine() *Engine { return s.eng }

// Shutdown stops the server; Wait waits for it.
func (s *Server) Shutdown() { s.rt.Load().Shutdown() }

// Wait blocks until every worker has stopped.
func (s *Server) Wait() { s.rt.Load().Wait() }

// Done is closed once every worker has stopped.
func (s *Server) Done() <-chan struct{} { return s.rt.Load().Done() }

// info adds the ringline facts to INFO's server and ringline sections.
func (s *Server) info(section string, b []byte) []byte {
	line := func(k string, v uint64) {
		b = append(b, k...)
		b = append(b, ':')
		b = strconv.AppendUint(b, v, 10)
		b = append(b, '\r', '\n')
	}
	rt := s.rt.Load()
	if rt == nil {
		return b
	}
	switch section {
	case "server":
		b = append(b, "ringline_backend:"+rt.Backend().String()+"\r\n"...)
		line("ringline_workers", uint64(rt.Workers()))
	case "ringline":
		stats := rt.Stats()
		t := ringline.Total(stats)
		line("accepted", t.Accepted)
		line("closed", t.Closed)
		line("rejected", t.Rejected)
		line("bytes_in", t.BytesIn)
		line("bytes_out", t.BytesOut)
		line("loop_iterations", t.LoopIterations)
		line("task_resumes", t.TaskResumes)
		line("cgo_calls", t.CgoCalls)
		line("ring_enters", t.RingEnters)
		line("enobufs", t.ENOBUFS)
		line("send_pool_exhausted", t.SendPoolExhausted)
		line("task_panics", t.TaskPanics)
		line("limit_closes", t.LimitCloses)
		for _, w := range stats {
			b = append(b, "worker"...)
			b = strconv.AppendInt(b, int64(w.Worker), 10)
			b = append(b, ":accepted="...)
			b = strconv.AppendUint(b, w.Accepted, 10)
			b = append(b, ",closed="...)
			b = strconv.AppendUint(b, w.Closed, 10)
			b = append(b, ",commands="...)
			s.mu.Lock()
			var c uint64
			if ctr := s.counters[w.Worker]; ctr != nil {
				c = ctr.Load()
			}
			s.mu.Unlock()
			b = strconv.AppendUint(b, c, 10)
			b = append(b, '\r', '\n')
		}
	}
	return b
}

// Commands returns the number of commands processed, over all workers.
func (s *Server) Commands() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, c := range s.counters {
		n += c.Load()
	}
	return n
}
