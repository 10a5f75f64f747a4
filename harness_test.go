package ringline

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/ringline-go/ringline/internal/require"
)

// requireIOUringEnv names the environment variable that makes an unusable
// io_uring a test failure instead of a skip. `make test` sets it, so a
// machine that should have io_uring cannot pass the suite on epoll alone.
const requireIOUringEnv = "RINGLINE_REQUIRE_IOURING"

var (
	uringProbeOnce sync.Once
	uringProbeErr  error
)

// uringUnusable reports why the io_uring backend cannot run in this build
// on this kernel, or nil. Probed once: every probe sets up a real ring.
func uringUnusable() error {
	uringProbeOnce.Do(func() {
		cfg := DefaultConfig()
		uringProbeErr = uringUsable(&cfg)
	})
	return uringProbeErr
}

// noteMissingIOUring makes a missing io_uring visible where a test would
// have run on it: a skip with the reason when the build leaves it out or
// the kernel refuses it, and a failure when the environment says io_uring
// is required (a build with io_uring compiled out is never a failure: it
// chose epoll).
func noteMissingIOUring(t *testing.T) {
	t.Helper()
	err := uringUnusable()
	if err == nil {
		return
	}
	if uringCompiled && os.Getenv(requireIOUringEnv) == "1" {
		t.Fatalf("io_uring is required (%s=1) but unusable: %v", requireIOUringEnv, err)
	}
	t.Skipf("io_uring not tested: %v", err)
}

// availableBackends lists the backends this build and kernel can run.
func availableBackends() []Backend {
	var out []Backend
	if uringUnusable() == nil {
		out = append(out, IOUring)
	}
	if epollBuilt {
		out = append(out, Epoll)
	}
	return out
}

// forEachBackend runs f as a subtest per backend. A backend this build or
// kernel cannot run is a skipped subtest that says why (or a failure, see
// noteMissingIOUring), never silently absent.
func forEachBackend(t *testing.T, f func(t *testing.T, be Backend)) {
	t.Helper()
	for _, be := range []Backend{IOUring, Epoll} {
		t.Run(be.String(), func(t *testing.T) {
			if be == IOUring {
				noteMissingIOUring(t)
			}
			f(t, be)
		})
	}
}

// onIOUring runs f as an "iouring" subtest, for scenarios that exist only
// on that backend (fixed files, the ring's batching).
func onIOUring(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	t.Run(IOUring.String(), func(t *testing.T) {
		noteMissingIOUring(t)
		f(t)
	})
}

// handlerFunc adapts a function to AsyncEventHandler.
type handlerFunc func(c ConnCtx)

func (f handlerFunc) OnAccept(c ConnCtx) { f(c) }

// testConfig is small so tests stay fast and exercise limits.
func testConfig(be Backend) Config {
	return Config{Workers: 1, Backend: be, RingEntries: 256, BufferCount: 64, BufferSize: 4096,
		MaxConnections: 1024, SendPoolSlots: 512, SendSlotSize: 4096, MaxRecvAccumulator: 1 << 20}
}

// serve launches a runtime on 127.0.0.1:0 and shuts it down (checking that
// it stops) when the test ends.
func serve(t *testing.T, cfg Config, h func(c ConnCtx)) *Runtime {
	t.Helper()
	rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(h) })
	require.NoError(t, err)
	t.Cleanup(func() {
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("runtime did not stop within 10s")
		}
	})
	return rt
}

// stop shuts rt down and waits until its workers are done, after which
// the test may read what they owned.
func stop(t *testing.T, rt *Runtime) {
	t.Helper()
	rt.Shutdown()
	select {
	case <-rt.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("runtime did not stop within 10s")
	}
}

// dial connects to rt from the test goroutine (it stops the test on
// failure, so it must not be called from goroutines the test spawns: use
// dialTCP there).
func dial(t *testing.T, rt *Runtime) *net.TCPConn {
	t.Helper()
	c, err := dialTCP(rt.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// dialTCP connects with a timeout and gives the connection a 30 s deadline,
// so a test that goes wrong fails instead of hanging until the suite's
// timeout. Safe from any goroutine; the caller closes the connection.
func dialTCP(addr string) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn), nil
}

// writeAsync writes msg from a new goroutine (so the caller can read the
// echo meanwhile) and delivers the write's error on the returned channel.
func writeAsync(c net.Conn, msg []byte) <-chan error {
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	return errc
}

// echoCheck writes msg to a new connection to addr and reads the echo
// back; safe from any goroutine (errors are returned, not reported).
func echoCheck(addr string, msg []byte) error {
	c, err := dialTCP(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	werr := writeAsync(c, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo of %d bytes differs", len(msg))
	}
	return nil
}

// runClients runs n clients concurrently, each in its own goroutine, and
// reports every error they return on the test goroutine.
func runClients(t *testing.T, n int, client func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := client(i); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// echoTask is the echo example's handler: Send with backpressure.
func echoTask(c ConnCtx) {
	for {
		var fut SendFuture
		var err error
		n := c.WithData(func(b []byte) ParseResult {
			if fut, err = c.Send(b); err != nil {
				c.Close() // WithData then returns 0 instead of waiting for more
				return Consumed(0)
			}
			return Consumed(len(b))
		})
		if n == 0 || err != nil {
			return
		}
		if _, err := fut.Await(); err != nil {
			return
		}
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// roundTrip writes msg from one goroutine and reads len(msg) bytes back.
// It stops the test on failure: call it from the test goroutine only.
func roundTrip(t *testing.T, c net.Conn, msg []byte) []byte {
	t.Helper()
	werr := writeAsync(c, msg)
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-werr)
	return got
}

// openFDs counts this process's descriptors other than epoll instances: a
// parking epoll worker holds a dup of its epoll fd only while it parks
// (epollBackend.startParking), so their number changes with the workers'
// waits. allFDs counts every descriptor, for checks made with no runtime
// running.
func openFDs(t *testing.T) int { return countFDs(t, false) }

func allFDs(t *testing.T) int { return countFDs(t, true) }

func countFDs(t *testing.T, epoll bool) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	n := 0
	for _, e := range ents {
		if !epoll {
			if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:[eventpoll]" {
				continue
			}
		}
		n++
	}
	return n
}

// settle waits until cond holds or the deadline passes (for counts that
// change asynchronously, such as goroutines winding down).
func settle(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}

// opCounter wraps a worker's backend and counts what the core asks of it:
// operations staged (by op code) and completions received, and, per
// connection, how many sends are in the kernel at once. Only the worker's
// goroutine calls it; read it after the runtime has stopped (Wait orders
// the worker's writes before the read).
type opCounter struct {
	backend
	det         detacher
	staged      [16]uint64 // by op code
	completions uint64     // every completion but the wake's
	sendsIn     map[uint64]int
	maxSendsIn  int                 // most sends in flight on one connection at once
	sendLens    map[uint64][]uint64 // bytes asked of each send op, per connection (user_data)
}

func (c *opCounter) stage(op sqOp) {
	c.staged[op.code]++
	if op.code == opSend || op.code == opSendmsg {
		c.sendsIn[op.ud]++
		c.sendLens[op.ud] = append(c.sendLens[op.ud], stagedSendLen(op))
		c.maxSendsIn = max(c.maxSendsIn, c.sendsIn[op.ud])
	}
	c.backend.stage(op)
}

func (c *opCounter) enter(wait bool, timeout time.Duration) ([]cqEntry, error) {
	cq, err := c.backend.enter(wait, timeout)
	for _, e := range cq {
		switch udKind(e.ud) {
		case udWake:
			continue
		case udSend:
			c.sendsIn[e.ud]--
		}
		c.completions++
	}
	return cq, err
}

func (c *opCounter) attach(idx uint32, fd int32, gen uint32) (int32, uint8) {
	return c.det.attach(idx, fd, gen)
}

func (c *opCounter) detach(idx uint32, fd int32, fixed bool, ud uint64) int {
	return c.det.detach(idx, fd, fixed, ud)
}

// stagedSendLen is the byte count a staged send or sendmsg asks for.
func stagedSendLen(op sqOp) uint64 {
	if op.code == opSend {
		return uint64(op.len)
	}
	m := (*msghdr)(unsafe.Add(nil, uintptr(op.addr)))
	var n uint64
	for _, v := range unsafe.Slice((*iovec)(unsafe.Add(nil, uintptr(m.iov))), m.iovlen) {
		n += v.len
	}
	return n
}

func (c *opCounter) stagedTotal() uint64 {
	var n uint64
	for _, k := range c.staged {
		n += k
	}
	return n
}

// countOps makes every worker launched until the test ends count its
// operations; the returned func gives the counters by worker id.
func countOps(t *testing.T) func() map[int]*opCounter {
	var mu sync.Mutex
	byWorker := make(map[int]*opCounter)
	testHookBackend = func(id int, be backend) backend {
		c := &opCounter{backend: be, det: be.(detacher), sendsIn: map[uint64]int{}, sendLens: map[uint64][]uint64{}}
		mu.Lock()
		byWorker[id] = c
		mu.Unlock()
		return c
	}
	t.Cleanup(func() { testHookBackend = nil })
	return func() map[int]*opCounter {
		mu.Lock()
		defer mu.Unlock()
		return byWorker
	}
}
