package ringline

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// sendWaitSetup is a worker with a 16-slot pool that one connection (the
// hog, whose client does not read) fills; other connections' tasks then
// SendWait. Each waiter's task reads its request (one byte: the waiter's
// id times 16 plus how many 4 KiB slots to send), calls SendWait (ids 8 to
// 11 with a 100 ms write deadline; ids from 12 write through NetConn
// instead), reports the outcome and awaits the send. A test's own handler
// (other) may take a connection first: it gets the first byte and reports
// whether it served the connection.
type sendWaitSetup struct {
	rt  *Runtime
	hog *net.TCPConn
	mu  sync.Mutex
	// order lists the waiters' ids in the order SendWait returned nil;
	// errs their errors.
	order []byte
	errs  map[byte]error
	done  chan byte
}

const swSlot = 4096

func newSendWaitSetup(t *testing.T, be Backend, other ...func(c ConnCtx, first byte) bool) *sendWaitSetup {
	s := &sendWaitSetup{errs: map[byte]error{}, done: make(chan byte, 16)}
	cfg := testConfig(be)
	cfg.SendPoolSlots = 16
	cfg.SendSlotSize = swSlot
	cfg.MaxSendQueue = 16 * swSlot
	cfg.SendZCThreshold = -1
	cfg.ShutdownTimeout = 300 * time.Millisecond // the hog never drains
	full := make(chan error, 1)
	s.rt = serve(t, cfg, func(c ConnCtx) {
		var req []byte
		if c.WithData(func(b []byte) ParseResult { req = append(req, b[0]); return Consumed(1) }) == 0 {
			return
		}
		if len(other) > 0 && other[0](c, req[0]) {
			return
		}
		if req[0] == 'H' {
			// Fill the pool on each byte received: the second time after
			// the kernel's socket buffers have taken what they hold.
			chunk := pattern(swSlot, 'H')
			for {
				var err error
				for err == nil {
					err = c.SendNowait(chunk)
				}
				full <- err
				if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
					return
				}
			}
		}
		id, slots := req[0]/16, int(req[0]%16)
		if id >= 8 && id < 12 {
			_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		}
		var err error
		if id >= 12 {
			// Through the net.Conn view, whose Write waits like SendWait.
			_, err = c.NetConn().Write(pattern(slots*swSlot, id))
		} else {
			err = c.SendWait(pattern(slots*swSlot, id))
		}
		s.mu.Lock()
		if err == nil {
			s.order = append(s.order, id)
		} else {
			s.errs[id] = err
		}
		s.mu.Unlock()
		s.done <- id
		if err == nil {
			if f, err := c.Send(nil); err == nil {
				_, _ = f.Await()
			}
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		}
	})
	// Small socket buffers for the hog (accepted sockets inherit the
	// listener's), so little of its bytes leave the pool for the kernel.
	require.NoError(t, unix.SetsockoptInt(s.rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
	s.hog = dialRcvbuf(t, s.rt, 4096)
	_, err := s.hog.Write([]byte("H"))
	require.NoError(t, err)
	require.ErrorIs(t, <-full, ErrSendPoolExhausted)
	// Refill until the kernel's socket buffers hold all they will and
	// the pool stays full.
	for i := 0; ; i++ {
		st0 := Total(s.rt.Stats())
		time.Sleep(100 * time.Millisecond)
		if st := Total(s.rt.Stats()); st.SendSlotsInUse == 16 && st.BytesOut == st0.BytesOut {
			break
		}
		require.Less(t, i, 100, "the hog's socket buffers never filled")
		_, err = s.hog.Write([]byte("F"))
		require.NoError(t, err)
		require.ErrorIs(t, <-full, ErrSendPoolExhausted)
	}
	return s
}

// waiter connects a waiter that asks for slots pool slots and returns once
// its SendWait is waiting.
func (s *sendWaitSetup) waiter(t *testing.T, id byte, slots int) *net.TCPConn {
	t.Helper()
	before := Total(s.rt.Stats()).SendWaits
	c := dial(t, s.rt)
	_, err := c.Write([]byte{id*16 + byte(slots)})
	require.NoError(t, err)
	require.True(t, settle(10*time.Second, func() bool { return Total(s.rt.Stats()).SendWaits == before+1 }),
		"waiter %d did not start waiting", id)
	return c
}

// drainHog reads the hog's bytes slowly, a slot's worth at a time, so the
// pool frees one slot after another.
func (s *sendWaitSetup) drainHog(t *testing.T, stop <-chan struct{}) {
	buf := make([]byte, swSlot)
	for {
		select {
		case <-stop:
			return
		default:
		}
		_ = s.hog.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, _ = s.hog.Read(buf)
		time.Sleep(2 * time.Millisecond)
	}
}

// Waiters are served first come, first served as the pool drains: the
// first, which needs three slots, is not overtaken by later ones that need
// fewer, and each gets its bytes through intact.
func TestSendWaitFIFO(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		s := newSendWaitSetup(t, be)
		clients := map[byte]*net.TCPConn{}
		need := map[byte]int{1: 3, 2: 1, 3: 2, 4: 1}
		for id := byte(1); id <= 4; id++ {
			clients[id] = s.waiter(t, id, need[id])
		}
		stop := make(chan struct{})
		defer close(stop)
		go s.drainHog(t, stop)
		for range need {
			select {
			case <-s.done:
			case <-time.After(20 * time.Second):
				t.Fatal("waiters not all served")
			}
		}
		s.mu.Lock()
		assert.Equal(t, []byte{1, 2, 3, 4}, s.order, "served in the order they started waiting")
		assert.Empty(t, s.errs)
		s.mu.Unlock()
		for id, c := range clients {
			got := make([]byte, need[id]*swSlot)
			_, err := io.ReadFull(c, got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pattern(need[id]*swSlot, id), got), "waiter %d's bytes", id)
		}
	})
}

// A waiter whose connection is reset while it waits gets the reset's error
// (nothing of its bytes queued), and the waiters behind it are served. A
// waiting task is not woken by what it does not wait for: bytes arriving
// on its own connection resume nothing.
func TestSendWaitConnectionClosed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		s := newSendWaitSetup(t, be)
		w1 := s.waiter(t, 1, 8)
		w2 := s.waiter(t, 2, 1)
		before := Total(s.rt.Stats()).TaskResumes
		_, err := w1.Write([]byte("more bytes, not what SendWait waits for"))
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond)
		assert.Equal(t, before, Total(s.rt.Stats()).TaskResumes, "a task waiting in SendWait was resumed by received bytes")

		require.NoError(t, w1.SetLinger(0))
		require.NoError(t, w1.Close()) // RST
		select {
		case id := <-s.done:
			require.Equal(t, byte(1), id)
		case <-time.After(20 * time.Second):
			t.Fatal("the waiter of the reset connection did not return")
		}
		s.mu.Lock()
		err = s.errs[1]
		s.mu.Unlock()
		require.Error(t, err)
		assert.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, ErrClosed), "got %v", err)

		stop := make(chan struct{})
		defer close(stop)
		go s.drainHog(t, stop)
		select {
		case id := <-s.done:
			require.Equal(t, byte(2), id)
		case <-time.After(20 * time.Second):
			t.Fatal("the next waiter was not served")
		}
		got := make([]byte, swSlot)
		_, err = io.ReadFull(w2, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(pattern(swSlot, 2), got))
	})
}

// A waiter's write deadline ends its wait with an error satisfying
// os.ErrDeadlineExceeded; a shutdown ends every wait with ErrShutdown.
// Nothing of their bytes is queued.
func TestSendWaitDeadlineAndShutdown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		s := newSendWaitSetup(t, be)
		s.waiter(t, 1, 2)
		s.waiter(t, 8, 2) // with a write deadline 100 ms away
		select {
		case id := <-s.done:
			require.Equal(t, byte(8), id)
		case <-time.After(20 * time.Second):
			t.Fatal("the write deadline did not end the wait")
		}
		s.mu.Lock()
		err := s.errs[8]
		s.mu.Unlock()
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		stop(t, s.rt)
		s.mu.Lock()
		defer s.mu.Unlock()
		assert.ErrorIs(t, s.errs[1], ErrShutdown)
		assert.Empty(t, s.order)
	})
}

// SendWait with room queues at once; bytes larger than the whole pool are
// refused at once rather than waited for; off a task (the worker's loop)
// it does not wait.
func TestSendWaitImmediate(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		res := make(chan error, 3)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			res <- c.SendWait([]byte("now"))
			res <- c.SendWait(make([]byte, cfg.SendPoolSlots*cfg.SendSlotSize+1))
			_ = c.w.post(func() { res <- c.SendWait([]byte("!")) })
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		var r [3]error
		for i := range r {
			select {
			case r[i] = <-res:
			case <-time.After(20 * time.Second):
				t.Fatalf("SendWait call %d did not return", i)
			}
		}
		assert.NoError(t, r[0])
		assert.ErrorIs(t, r[1], ErrSendPoolExhausted)
		assert.NoError(t, r[2], "room: queued from the loop without waiting")
		got := make([]byte, 4)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		assert.Equal(t, "now!", string(got))
		assert.Zero(t, Total(rt.Stats()).SendWaits)
	})
}

// SendParts with one copied part and one referenced part allocates
// nothing per message in steady state (zero copy included: the pins reuse
// their pinner), the client included.
func TestSendPartsNoAllocsPerMessage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				value := pattern(64, 0x55) // the cached value: echo its length back
				release := func() {}
				rt := serve(t, cfg, func(c ConnCtx) {
					for c.WithData(func(b []byte) ParseResult {
						// Each 64-byte request is answered with its first
						// 8 bytes copied and the rest from "the cache".
						n := len(b) / 64 * 64
						for off := 0; off < n; off += 64 {
							if err := c.SendParts().Copy(b[off:off+8]).Ref(value[8:], release).Submit(); err != nil {
								c.Close()
								return Consumed(0)
							}
						}
						return Consumed(n)
					}) > 0 {
					}
				})
				// The echo check needs the reply to equal the request:
				// the clients send requests whose last 56 bytes are the
				// value's.
				const conns, msgs, depth = 4, 20000, 16
				pipelinedRequests(t, rt, conns, 2000, depth, value) // warm up
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				pipelinedRequests(t, rt, conns, msgs, depth, value)
				runtime.ReadMemStats(&m1)
				perMsg := float64(m1.Mallocs-m0.Mallocs) / float64(conns*msgs)
				t.Logf("%.5f allocations per message (%d over %d messages, client included); %d zero-copy sends",
					perMsg, m1.Mallocs-m0.Mallocs, conns*msgs, Total(rt.Stats()).ZeroCopySends)
				if mode == "zerocopy" {
					assert.Greater(t, Total(rt.Stats()).ZeroCopySends, uint64(1000), "the zero-copy path (pins) measured")
				}
				assert.Less(t, perMsg, 0.01)
			})
		}
	})
}

// pipelinedRequests runs pipelinedEcho's clients with 64-byte requests
// made of a per-connection 8-byte prefix and value's last 56 bytes.
func pipelinedRequests(t *testing.T, rt *Runtime, conns, msgs, depth int, value []byte) {
	t.Helper()
	runClients(t, conns, func(i int) error {
		c, err := dialTCP(rt.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		req := append([]byte("req-000"+string(rune('a'+i))), value[8:]...)
		batch := bytes.Repeat(req, depth)
		got := make([]byte, len(batch))
		for sent := 0; sent < msgs; sent += depth {
			if _, err := c.Write(batch); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, got); err != nil {
				return err
			}
			if !bytes.Equal(got, batch) {
				return errors.New("reply differs from the request")
			}
		}
		return nil
	})
}

// NetConn's Write, when other connections hold the pool, waits in the same
// first-come-first-served line as SendWait: it is served after the
// waiter ahead of it and before the one behind, wakes only when its turn
// comes (no polling: the loop stays idle while it waits), and its bytes
// arrive intact.
func TestNetConnWriteWaitsInLine(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		s := newSendWaitSetup(t, be)
		need := map[byte]int{1: 2, 12: 3, 2: 1}
		clients := map[byte]*net.TCPConn{}
		for _, id := range []byte{1, 12, 2} {
			clients[id] = s.waiter(t, id, need[id])
		}
		loops0 := Total(s.rt.Stats()).LoopIterations
		time.Sleep(200 * time.Millisecond)
		idle := Total(s.rt.Stats()).LoopIterations - loops0
		assert.Less(t, idle, uint64(20), "the loop ran %d times in 200 ms while the writers waited (a poll?)", idle)

		stop := make(chan struct{})
		defer close(stop)
		go s.drainHog(t, stop)
		for range need {
			select {
			case <-s.done:
			case <-time.After(20 * time.Second):
				t.Fatal("writers not all served")
			}
		}
		s.mu.Lock()
		assert.Equal(t, []byte{1, 12, 2}, s.order, "NetConn.Write served in its turn")
		assert.Empty(t, s.errs)
		s.mu.Unlock()
		for id, c := range clients {
			got := make([]byte, need[id]*swSlot)
			_, err := io.ReadFull(c, got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(pattern(need[id]*swSlot, id), got), "writer %d's bytes", id)
		}
	})
}

// A task waiting in SendWait on another task's connection, which closes
// and whose task returns: its slot is released (and free for a new
// connection) before the waiter runs again. SendWait then answers
// ErrStale, as every other method on that handle does from then on (a
// SendNowait right after it, with no loop turn between), not ErrClosed,
// the answer for a connection that is closing but still holds its slot.
// Either way errors.Is(err, ErrClosed) holds, and nothing of the bytes
// was queued.
func TestSendWaitStaleAfterSlotReleased(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type outcome struct{ wait, next error }
		res := make(chan outcome, 1)
		s := newSendWaitSetup(t, be, func(c ConnCtx, first byte) bool {
			if first != 'V' {
				return false
			}
			w := c.w
			before := w.st.sendWaits
			if _, err := c.Task().Spawn(func(TaskCtx) {
				var r outcome
				r.wait = c.SendWait(pattern(swSlot, 'v')) // the hog keeps the pool full
				r.next = c.SendNowait([]byte{'v'})
				res <- r
			}); err != nil {
				res <- outcome{wait: err}
				return true
			}
			for w.st.sendWaits == before {
				_ = c.Task().Sleep(time.Millisecond)
			}
			// Nothing queued, so the close starts now, and the slot is
			// released as soon as it completes: this task returns first.
			c.Close()
			return true
		})
		// The close's completions normally all come back in the loop turn
		// after it, before the woken waiter runs; should one come later,
		// the waiter found its connection closing (ErrClosed from both
		// calls) and the scenario is tried again.
		stale := false
		for try := 0; try < 10 && !stale; try++ {
			v := dial(t, s.rt)
			_, err := v.Write([]byte("V"))
			require.NoError(t, err)
			var r outcome
			select {
			case r = <-res:
			case <-time.After(20 * time.Second):
				t.Fatal("the waiter did not return")
			}
			require.ErrorIs(t, r.next, ErrClosed, "SendNowait on the closed connection's handle")
			if stale = errors.Is(r.next, ErrStale); stale {
				assert.ErrorIs(t, r.wait, ErrStale, "SendWait on a handle whose slot was released while it waited")
				assert.ErrorIs(t, r.wait, ErrClosed, "ErrStale is also ErrClosed")
			} else {
				assert.Equal(t, ErrClosed, r.wait, "SendWait on a closing connection")
			}
			got, err := io.ReadAll(v)
			require.NoError(t, err)
			assert.Empty(t, got, "nothing of the waiter's bytes was sent")
		}
		require.True(t, stale, "the slot was never released before the waiter ran again")
	})
}
