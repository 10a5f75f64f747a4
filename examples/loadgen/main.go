// Command loadgen is an echo load generator on a client-only ringline
// runtime: no listener, one start task per worker (OnStart), which opens
// its share of the connections and drives each in a task of its own.
//
// Every connection keeps -depth messages of -size bytes in flight for
// -duration: it sends until depth messages are outstanding, and sends one
// more for each echo that comes back. The bytes are a pseudo-random
// stream per connection (seeded by -seed and the connection number), and
// every echoed byte is compared with the same stream regenerated on
// return, so a server that loses, reorders, duplicates or corrupts a
// byte is caught. Round trips are timed per message (from the send of
// its first byte to the receipt of its last).
//
// It prints messages per second and p50/p99/max round trip, and exits 1
// if any connection failed or any byte differed.
//
//	loadgen -addr 127.0.0.1:7878 -conns 64 -size 64 -depth 16 -duration 5s
//	loadgen -addr unix:/run/echo.sock
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline"
)

type options struct {
	tcp      netip.AddrPort
	unix     string
	conns    int
	size     int
	depth    int
	duration time.Duration
	timeout  time.Duration
	seed     uint64
	workers  int
}

// workerStats are one worker's results, written only by its tasks and
// read once the runtime has stopped.
type workerStats struct {
	msgs, bytes   uint64
	connectErrs   int
	mismatches    int
	earlyEOF      int
	sendErrs      int
	firstErr      error
	hist          histogram
	firstMismatch string
}

func (s *workerStats) fail(err error) {
	if s.firstErr == nil {
		s.firstErr = err
	}
}

// gen is every worker's handler; each worker has its own stats.
type gen struct {
	o       *options
	stats   []*workerStats
	start   time.Time
	end     time.Time
	running *atomic.Int32 // workers whose connections are still running
}

// OnAccept is never called: the runtime has no listener.
func (g *gen) OnAccept(ringline.ConnCtx) {}

// OnStart is each worker's start task: it starts this worker's
// connections (connection i runs on worker i mod workers), waits for all
// of them, and the last worker to finish stops the runtime.
func (g *gen) OnStart(t ringline.TaskCtx) {
	w := t.WorkerID()
	st := g.stats[w]
	var hs []ringline.JoinHandle
	for i := w; i < g.o.conns; i += g.o.workers {
		h, err := t.Spawn(func(t ringline.TaskCtx) { g.runConn(t, i, st) })
		if err != nil {
			st.fail(err)
			break
		}
		hs = append(hs, h)
	}
	for _, h := range hs {
		if err := h.Join(); err != nil {
			st.fail(err)
		}
	}
	if g.running.Add(-1) == 0 {
		_ = t.RequestShutdown()
	}
}

// runConn drives connection i until the run ends and its echoes are in.
func (g *gen) runConn(t ringline.TaskCtx, i int, st *workerStats) {
	o := g.o
	var fut ringline.ConnectFuture
	var err error
	if o.unix != "" {
		fut, err = t.ConnectUnix(o.unix)
	} else {
		fut, err = t.ConnectWithTimeout(o.tcp, o.timeout)
	}
	var c ringline.ConnCtx
	if err == nil {
		c, err = fut.Await()
	}
	if err != nil {
		st.connectErrs++
		st.fail(fmt.Errorf("connection %d: %w", i, err))
		return
	}
	defer c.Close()
	// A server that stops answering ends the run instead of hanging it.
	_ = c.SetReadDeadline(g.end.Add(10 * time.Second))

	seed := o.seed ^ uint64(i+1)*0x9e3779b97f4a7c15
	tx, rx := newStream(seed), newStream(seed)
	msg := make([]byte, o.size)
	sentAt := make([]int64, o.depth) // ring: send time of each outstanding message
	var sent, recvd int
	rxOff := 0       // bytes of the current message received
	pending := false // msg holds a message a refused send left unsent
	now := func() int64 { return int64(time.Since(g.start)) }
	endAt := int64(g.end.Sub(g.start))

	fill := func() bool {
		for sent-recvd < o.depth && now() < endAt {
			if !pending {
				tx.fill(msg)
				pending = true
			}
			sentAt[sent%o.depth] = now()
			err := c.SendNowait(msg)
			noRoom := errors.Is(err, ringline.ErrSendPoolExhausted) || errors.Is(err, ringline.ErrSendQueueFull)
			if noRoom && sent == recvd {
				// Nothing was queued and nothing will come back to wait
				// for: wait for room (first come, first served with the
				// worker's other connections). It fails at once only for
				// a message that can never fit (-size past the pool).
				err = c.SendWait(msg)
				noRoom = false
			}
			if err != nil {
				if noRoom {
					// Nothing was queued: the same message goes again
					// once this connection's earlier sends have drained
					// (their echoes are awaited below).
					return true
				}
				st.sendErrs++
				st.fail(fmt.Errorf("connection %d: send: %w", i, err))
				return false
			}
			pending = false
			sent++
		}
		return true
	}
	if !fill() {
		return
	}
	for sent > recvd {
		bad := false
		n := c.WithData(func(b []byte) ringline.ParseResult {
			done := 0
			for len(b) > 0 {
				take := min(len(b), o.size-rxOff)
				if at, ok := rx.check(b[:take]); !ok {
					if st.firstMismatch == "" {
						st.firstMismatch = fmt.Sprintf("connection %d, message %d, byte %d", i, recvd, rxOff+at)
					}
					bad = true
					return ringline.Consumed(done)
				}
				rxOff += take
				done += take
				b = b[take:]
				if rxOff == o.size {
					rxOff = 0
					st.hist.add(now() - sentAt[recvd%o.depth])
					st.msgs++
					recvd++
				}
			}
			return ringline.Consumed(done)
		})
		if bad {
			st.mismatches++
			st.fail(fmt.Errorf("echo differs: %s", st.firstMismatch))
			return
		}
		if n == 0 {
			st.earlyEOF++
			st.fail(fmt.Errorf("connection %d: the server closed with %d messages outstanding (%v)", i, sent-recvd, c.Err()))
			return
		}
		st.bytes += uint64(n)
		if !fill() {
			return
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:7878", "echo server: host:port, or unix:PATH")
	conns := flag.Int("conns", 64, "connections")
	size := flag.Int("size", 64, "message size in bytes")
	depth := flag.Int("depth", 16, "messages in flight per connection (pipeline depth)")
	duration := flag.Duration("duration", 5*time.Second, "how long to send")
	workers := flag.Int("workers", 0, "worker loops (0: one per CPU)")
	backend := flag.String("backend", "auto", "backend: auto, iouring or epoll")
	timeout := flag.Duration("connect-timeout", 5*time.Second, "connect timeout (TCP)")
	seed := flag.Uint64("seed", 1, "seed of the byte streams")
	flag.Parse()
	if *conns < 1 || *size < 1 || *depth < 1 || *duration <= 0 {
		log.Fatal("loadgen: -conns, -size, -depth and -duration must be positive")
	}
	o := &options{conns: *conns, size: *size, depth: *depth, duration: *duration, timeout: *timeout, seed: *seed, workers: *workers}
	if p, ok := strings.CutPrefix(*addr, "unix:"); ok {
		o.unix = p
	} else {
		ta, err := net.ResolveTCPAddr("tcp", *addr)
		if err != nil {
			log.Fatalf("loadgen: -addr %q: %v", *addr, err)
		}
		o.tcp = ta.AddrPort()
	}
	if o.workers == 0 {
		o.workers = runtime.NumCPU()
	}
	o.workers = min(o.workers, o.conns)

	cfg := ringline.Config{Workers: o.workers}
	switch *backend {
	case "auto":
		cfg.Backend = ringline.Auto
	case "iouring":
		cfg.Backend = ringline.IOUring
	case "epoll":
		cfg.Backend = ringline.Epoll
	default:
		log.Fatalf("unknown -backend %q", *backend)
	}
	g := &gen{o: o, running: new(atomic.Int32)}
	g.running.Store(int32(o.workers))
	for range o.workers {
		g.stats = append(g.stats, &workerStats{})
	}
	g.start = time.Now()
	g.end = g.start.Add(o.duration)
	// No Bind: a client-only runtime. Its workers run OnStart.
	rt, err := ringline.New(cfg).Launch(func(int) ringline.AsyncEventHandler { return g })
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("loadgen: %d connections to %s, %d B messages, pipeline depth %d, %v; %d workers, backend %s\n",
		o.conns, *addr, o.size, o.depth, o.duration, rt.Workers(), rt.Backend())
	rt.Wait()
	elapsed := time.Since(g.start)

	var tot workerStats
	var firstErr error
	for _, s := range g.stats {
		tot.msgs += s.msgs
		tot.bytes += s.bytes
		tot.connectErrs += s.connectErrs
		tot.mismatches += s.mismatches
		tot.earlyEOF += s.earlyEOF
		tot.sendErrs += s.sendErrs
		tot.hist.merge(&s.hist)
		if firstErr == nil {
			firstErr = s.firstErr
		}
	}
	secs := min(elapsed, o.duration).Seconds()
	fmt.Printf("loadgen: %d messages, %.0f msgs/s, %.1f MB/s each way; round trip p50 %v p99 %v max %v\n",
		tot.msgs, float64(tot.msgs)/secs, float64(tot.bytes)/secs/1e6,
		tot.hist.quantile(0.50), tot.hist.quantile(0.99), tot.hist.max())
	fmt.Printf("loadgen: errors: connect %d, send %d, closed early %d, mismatched %d\n",
		tot.connectErrs, tot.sendErrs, tot.earlyEOF, tot.mismatches)
	if firstErr != nil {
		fmt.Fprintf(os.Stderr, "loadgen: first error: %v\n", firstErr)
		os.Exit(1)
	}
}

// stream is a connection's pseudo-random byte stream (xorshift64*): the
// sender fills messages from it, the receiver regenerates it to check.
type stream struct {
	s    uint64
	word uint64
	left int // bytes of word not yet used
}

func newStream(seed uint64) *stream {
	if seed == 0 {
		seed = 1
	}
	return &stream{s: seed}
}

func (r *stream) next() byte {
	if r.left == 0 {
		r.s ^= r.s >> 12
		r.s ^= r.s << 25
		r.s ^= r.s >> 27
		r.word = r.s * 2685821657736338717
		r.left = 8
	}
	b := byte(r.word)
	r.word >>= 8
	r.left--
	return b
}

// fill writes the stream's next len(p) bytes into p.
func (r *stream) fill(p []byte) {
	for i := range p {
		p[i] = r.next()
	}
}

// check compares p with the stream's next bytes; on a difference it
// reports where.
func (r *stream) check(p []byte) (int, bool) {
	for i, b := range p {
		if r.next() != b {
			return i, false
		}
	}
	return len(p), true
}

// histogram records round trips: 1 µs buckets up to 10 ms, 100 µs
// buckets up to 1 s, and one bucket beyond.
type histogram struct {
	fine   [10_000]uint64
	coarse [9_900]uint64
	over   uint64
	n      uint64
	top    int64
}

func (h *histogram) add(ns int64) {
	h.n++
	h.top = max(h.top, ns)
	us := ns / 1000
	switch {
	case us < 10_000:
		h.fine[us]++
	case us < 1_000_000:
		h.coarse[(us-10_000)/100]++
	default:
		h.over++
	}
}

func (h *histogram) merge(o *histogram) {
	for i := range h.fine {
		h.fine[i] += o.fine[i]
	}
	for i := range h.coarse {
		h.coarse[i] += o.coarse[i]
	}
	h.over += o.over
	h.n += o.n
	h.top = max(h.top, o.top)
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for i, c := range h.fine {
		if seen += c; seen >= rank {
			return time.Duration(i+1) * time.Microsecond
		}
	}
	for i, c := range h.coarse {
		if seen += c; seen >= rank {
			return time.Duration(10_000+(i+1)*100) * time.Microsecond
		}
	}
	return h.max()
}

func (h *histogram) max() time.Duration { return time.Duration(h.top).Round(time.Microsecond) }
