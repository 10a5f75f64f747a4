package ringline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A connection's SendBuilder handed to another goroutine is refused there
// like a ConnCtx (ErrNotInWorker, counted as a foreign call) without
// touching the batch its task has open: the foreign Ref's release runs
// once, the task's own parts are neither dropped nor released early, no
// pool slot leaks, and the task's Submit sends its batch whole.
func TestSendBuilderOffWorkerLeavesBatchAlone(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rel := newReleases(3) // 0, 2: the task's references; 1: the foreign one
		value := pattern(3000, 1)
		handoff := make(chan *SendBuilder)
		back := make(chan error)
		submitted := make(chan error, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			sb := c.SendParts().Copy([]byte("head")).Ref(value, rel.fn(0))
			// The worker waits here (a test only) while another goroutine
			// misuses the builder.
			handoff <- sb
			<-back
			submitted <- sb.Ref([]byte("tail"), rel.fn(2)).Submit()
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		sb := <-handoff
		sb.Copy([]byte("foreign"))
		sb.Ref([]byte("foreign"), rel.fn(1))
		ferr := sb.Submit()
		_, ferr2 := sb.Send()
		// Checked while the task still waits: its batch is not sent yet.
		assert.Equal(t, int32(1), rel.n[1].Load(), "the foreign Ref's release ran once, at once")
		assert.Zero(t, rel.n[0].Load(), "the task's reference released by the foreign goroutine")
		back <- nil
		require.ErrorIs(t, ferr, ErrNotInWorker)
		assert.ErrorIs(t, ferr2, ErrNotInWorker)
		assert.NoError(t, <-submitted, "the task's batch survives the foreign calls")
		want := append(append([]byte("head"), value...), "tail"...)
		got := make([]byte, len(want))
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "the peer got %q...", got[:min(16, len(got))])
		assert.GreaterOrEqual(t, Total(rt.Stats()).ForeignCalls, uint64(4))
		cl.Close()
		stop(t, rt)
		rel.exactlyOnce(t)
		assert.Zero(t, Total(rt.Stats()).SendSlotsInUse, "pool slots all returned")
	})
}

// A Ref of the bytes a WithData closure is shown, when they lie in the
// kernel's receive buffer lent to it, must not let the kernel read that
// buffer after the closure returned: the buffer goes back to the ring
// then and carries other connections' bytes, which would reach this
// connection's peer. Here the referenced send waits behind a full socket
// while another connection receives through every buffer of the ring; the
// peer must still read exactly the bytes it was sent.
func TestSendPartsRefOfLentBufferSendsItsBytes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferCount = 16
		cfg.BufferSize = 1024
		cfg.SendZCThreshold = -1
		const filler, payload, other = 256 << 10, 1000, 256 << 10
		filled := make(chan struct{}, 1)
		refd := make(chan error, 1)
		var refs, released atomic.Int32
		rt := serve(t, cfg, func(c ConnCtx) {
			var role byte
			if c.WithData(func(b []byte) ParseResult { role = b[0]; return Consumed(1) }) == 0 {
				return
			}
			if role == 'B' {
				for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
				}
				return
			}
			// A: fill the socket, so what is queued next waits.
			if err := c.SendNowait(pattern(filler, 'f')); err != nil {
				panic(err)
			}
			filled <- struct{}{}
			var err error
			for got := 0; got < payload && err == nil; {
				got += c.WithData(func(b []byte) ParseResult {
					refs.Add(1)
					err = c.SendParts().Ref(b, func() { released.Add(1) }).Submit()
					return Consumed(len(b))
				})
			}
			refd <- err
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		msg := pattern(payload, 'p')
		a := refBehindFullSocket(t, rt, filled, refd, msg)
		// Another connection's bytes pass through every receive buffer.
		b := dial(t, rt)
		_, err := b.Write(append([]byte("B"), bytes.Repeat([]byte{0xEE}, other)...))
		require.NoError(t, err)
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).BytesIn >= uint64(1+payload+1+other) }),
			"the other connection's bytes were not all received")
		got := make([]byte, filler+payload)
		_, err = io.ReadFull(a, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(pattern(filler, 'f'), got[:filler]), "the filler")
		if !bytes.Equal(msg, got[filler:]) {
			t.Fatalf("the referenced bytes changed before they were sent: %d of %d differ (0xEE: another connection's)",
				countDiff(msg, got[filler:]), payload)
		}
		a.Close()
		stop(t, rt)
		assert.Equal(t, refs.Load(), released.Load(), "every release ran once")
	})
}

func countDiff(a, b []byte) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

// The same for accumulated bytes: a WithData closure shown bytes joined in
// the connection's accumulator may Ref them, and the peer still reads
// them as they were, though the accumulator is reused for the bytes that
// follow while the send waits behind a full socket.
func TestSendPartsRefOfAccumulatedBytesSendsThem(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferSize = 1024
		cfg.SendZCThreshold = -1
		const filler, frame, more = 256 << 10, 3000, 64 << 10
		filled := make(chan struct{}, 1)
		refd := make(chan error, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(1) }) == 0 {
				return
			}
			if err := c.SendNowait(pattern(filler, 'f')); err != nil {
				panic(err)
			}
			filled <- struct{}{}
			var err error
			c.WithData(func(b []byte) ParseResult {
				if len(b) < frame {
					return NeedAtLeast(frame) // joined across receive buffers
				}
				err = c.SendParts().Ref(b[:frame], nil).Submit()
				return Consumed(frame)
			})
			refd <- err
			// Frames of 8 KiB: joined in the accumulator too.
			for c.WithData(func(b []byte) ParseResult {
				if len(b) < 8<<10 {
					return NeedAtLeast(8 << 10)
				}
				return Consumed(8 << 10)
			}) > 0 {
			}
		})
		msg := pattern(frame, 'p')
		a := refBehindFullSocket(t, rt, filled, refd, msg)
		before := Total(rt.Stats()).BytesIn
		_, err := a.Write(bytes.Repeat([]byte{0xEE}, more))
		require.NoError(t, err)
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).BytesIn >= before+more }),
			"the bytes that follow were not all received")
		got := make([]byte, filler+frame)
		_, err = io.ReadFull(a, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(pattern(filler, 'f'), got[:filler]), "the filler")
		if !bytes.Equal(msg, got[filler:]) {
			t.Fatalf("the referenced bytes changed before they were sent: %d of %d differ", countDiff(msg, got[filler:]), frame)
		}
	})
}

// A release callback that calls runtime.Goexit (as t.FailNow and require.*
// do in a test's callback) is survived like a panic in one: it runs on the
// worker's loop, which must not end with it. The worker keeps serving,
// the other releases still run once, and the runtime stops.
func TestSendPartsReleaseGoexitKeepsWorker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		runtime.GC()
		g0 := runtime.NumGoroutine()
		cfg := testConfig(be)
		logs := captureLog(&cfg)
		rel := newReleases(5)
		sent := make(chan error, 1)
		var conns atomic.Int32
		rt := serve(t, cfg, func(c ConnCtx) {
			if conns.Add(1) == 1 {
				if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
					return
				}
				f, err := c.SendParts().Ref([]byte("one"), rel.fn(0)).
					Ref([]byte("two"), func() { rel.fn(1)(); runtime.Goexit() }).
					Ref([]byte("three"), func() {
						rel.fn(2)()
						// A batch abandoned inside the release: its own
						// releases run there, and one of them Goexits.
						c.SendParts().Ref([]byte("x"), func() { rel.fn(3)(); runtime.Goexit() }).Ref([]byte("y"), rel.fn(4))
						c.SendParts()
					}).Send()
				if err == nil {
					_, err = f.Await()
				}
				sent <- err
			}
			echoTask(c)
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		select {
		case err := <-sent:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("the batch's future never resolved: the worker is gone")
		}
		got := make([]byte, len("onetwothree"))
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		require.Equal(t, "onetwothree", string(got))
		require.True(t, settle(5*time.Second, func() bool { return rel.total() == 5 }), "releases run: %d of 5", rel.total())
		// The worker still serves: a new connection echoes, the first one too.
		require.NoError(t, echoCheck(rt.Addr().String(), pattern(5000, 1)))
		msg := pattern(3000, 2)
		require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)))
		cl.Close()
		stop(t, rt)
		rel.exactlyOnce(t)
		assert.Contains(t, logs.String(), "Goexit")
		// The release coroutines (the one a Goexit ended, the one after
		// it) are gone too.
		assert.True(t, settle(5*time.Second, func() bool { return runtime.NumGoroutine() <= g0 }),
			"goroutines: before %d, after %d", g0, runtime.NumGoroutine())
	})
}

// Releases run inside a task (those of a batch refused or abandoned inside
// it) that end the task still let every other release of the batch run
// exactly once: one that calls runtime.Goexit ends its task alone, and
// one that suspends (which it must not) is stopped with its task at the
// shutdown deadline instead of swallowing the stop and running the task
// on.
func TestSendPartsReleaseEndingItsTask(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.ShutdownTimeout = 300 * time.Millisecond
		rel := newReleases(5)
		var ranOn atomic.Bool
		sleeping := make(chan struct{})
		rt := serve(t, cfg, func(c ConnCtx) {
			var role byte
			if c.WithData(func(b []byte) ParseResult { role = b[0]; return Consumed(len(b)) }) == 0 {
				return
			}
			switch role {
			case 'G':
				c.SendParts().Ref([]byte("a"), rel.fn(0)).Ref([]byte("b"), func() { rel.fn(1)(); runtime.Goexit() }).Ref([]byte("c"), rel.fn(2))
				c.SendParts() // abandons the batch: its releases run here
				ranOn.Store(true)
			case 'S':
				c.SendParts().Ref([]byte("d"), func() {
					rel.fn(3)()
					close(sleeping)
					for {
						_ = c.Task().Sleep(time.Hour)
					}
				}).Ref([]byte("e"), rel.fn(4))
				c.SendParts()
				ranOn.Store(true)
			}
		})
		g := dial(t, rt)
		_, err := g.Write([]byte("G"))
		require.NoError(t, err)
		_, err = g.Read(make([]byte, 1)) // EOF: the task ended, its connection closed
		require.ErrorIs(t, err, io.EOF)
		assert.Equal(t, int32(1), rel.n[2].Load(), "the release after the Goexit ran")
		s := dial(t, rt)
		_, err = s.Write([]byte("S"))
		require.NoError(t, err)
		<-sleeping
		stop(t, rt)
		rel.exactlyOnce(t)
		assert.False(t, ranOn.Load(), "a task ran on past its end inside a release")
	})
}

// A connection forwarding to a peer that does not read holds a receive
// buffer for as long as that peer does not read (bounded: BufferCount/16
// per connection). The ring's other buffers must keep serving the worker's
// other connections: one whose socket holds more than the free buffers,
// parked on ENOBUFS at the head of the queue, must still be re-armed with
// what the ring can give, or every parked connection waits for a buffer
// that never comes back.
func TestForwardHoldDoesNotStallParkedConnections(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferCount = 16 // one held by the forward; a burst needs more than the other 15
		cfg.BufferSize = 1024
		cfg.SendZCThreshold = -1
		const bulk = 1 << 20
		held := make(chan error, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			var role byte
			if c.WithData(func(b []byte) ParseResult { role = b[0]; return Consumed(1) }) == 0 {
				return
			}
			switch role {
			case 'H':
				// Fill the socket of a peer that does not read, then
				// forward one received buffer behind it: the buffer stays
				// held.
				if err := c.SendNowait(pattern(256<<10, 'f')); err != nil {
					panic(err)
				}
				var err error
				c.WithData(func(b []byte) ParseResult {
					err = c.ForwardRecvBuf(b)
					return Consumed(len(b))
				})
				held <- err
				for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
				}
			case 'B':
				// Read a burst larger than the ring, then answer.
				for got := 0; got < bulk; {
					n := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
					if n == 0 {
						return
					}
					got += n
				}
				_ = c.SendNowait([]byte("k"))
				c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			}
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
		h := dialRcvbuf(t, rt, 4096)
		_, err := h.Write([]byte("H"))
		require.NoError(t, err)
		time.Sleep(50 * time.Millisecond) // the filler queued first
		_, err = h.Write([]byte("held"))
		require.NoError(t, err)
		require.NoError(t, <-held)
		_, holds := freeBuffers(t, rt)
		require.Equal(t, 1, holds, "the forward holds its buffer")

		for i := 0; i < 3; i++ {
			b := dial(t, rt)
			_ = b.SetDeadline(time.Now().Add(10 * time.Second))
			werr := writeAsync(b, append([]byte("B"), pattern(bulk, byte(i))...))
			ack := make([]byte, 1)
			_, err = io.ReadFull(b, ack)
			require.NoError(t, err, "burst %d: the connection stalled (ENOBUFS %d)", i, Total(rt.Stats()).ENOBUFS)
			require.NoError(t, <-werr)
			b.Close()
		}
		assert.Greater(t, Total(rt.Stats()).ENOBUFS, uint64(0), "the bursts ran the ring dry")
	})
}

// Release callbacks may use the connection (they run on the worker,
// outside any task, in the release coroutine): one that sends, submits a
// batch whose own release sends and closes, all reach the peer in the
// order they were made, then the FIN; a panicking one is logged, and
// none of their calls is refused as foreign.
func TestSendPartsReleaseCallsBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				cfg.SendZCThreshold = min(cfg.SendZCThreshold, 1) // zero copy for every send in that mode
				logs := captureLog(&cfg)
				errs := make(chan error, 8)
				rt := serve(t, cfg, func(c ConnCtx) {
					if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
						return
					}
					errs <- c.SendParts().Ref([]byte("A"), func() {
						errs <- c.SendNowait([]byte("B"))
						errs <- c.SendParts().Ref([]byte("C"), func() {
							_, err := c.SendParts().Copy([]byte("D")).Send()
							errs <- err
							c.Close()
							panic("after the close")
						}).Submit()
					}).Submit()
					c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				})
				cl := dial(t, rt)
				_, err := cl.Write([]byte("go"))
				require.NoError(t, err)
				got, err := io.ReadAll(cl)
				require.NoError(t, err)
				assert.Equal(t, "ABCD", string(got))
				for range 4 {
					assert.NoError(t, <-errs)
				}
				assert.Zero(t, Total(rt.Stats()).ForeignCalls)
				assert.Contains(t, logs.String(), "after the close")
			})
		}
	})
}

// mixedEcho echoes each piece of what arrives by a send chosen at random
// (seeded by the connection's slot): SendNowait, a SendParts batch (a
// copied byte and a referenced copy, scrubbed on release; or the received
// bytes referenced), ForwardRecvBuf, or SendWait; a send refused for room
// is made again with SendWait. A quarter of the connections are cancelled
// part way.
func mixedEcho(refs, rels *atomic.Int64) func(c ConnCtx) {
	return func(c ConnCtx) {
		rng := rand.New(rand.NewSource(int64(c.Index())))
		cancelAt := -1 // a quarter of them, at a random piece
		if rng.Intn(4) == 0 {
			cancelAt = 20 + rng.Intn(200)
		}
		for piece := 0; ; piece++ {
			if piece == cancelAt {
				_ = c.Cancel()
			}
			var err error
			var later []byte
			n := c.WithData(func(b []byte) ParseResult {
				k := rng.Intn(min(len(b), 16<<10)) + 1
				p := b[:k]
				switch rng.Intn(5) {
				case 0:
					err = c.SendNowait(p)
				case 1:
					own := append([]byte(nil), p[1:]...)
					refs.Add(1)
					err = c.SendParts().Copy(p[:1]).Ref(own, func() {
						for i := range own {
							own[i] = 0xAA
						}
						rels.Add(1)
					}).Submit()
				case 2:
					err = c.ForwardRecvBuf(p)
				case 3:
					refs.Add(1)
					err = c.SendParts().Ref(p, func() { rels.Add(1) }).Submit()
				case 4:
					later = append([]byte(nil), p...)
				}
				if err == ErrSendPoolExhausted || err == ErrSendQueueFull {
					later, err = append([]byte(nil), p...), nil
				}
				return Consumed(k)
			})
			if n == 0 || err != nil && c.Err() != nil {
				return // the peer or the server cut the connection
			}
			if err != nil {
				panic(err)
			}
			if later != nil {
				if err := c.SendWait(later); err != nil {
					if c.Err() == nil {
						panic(err)
					}
					return
				}
			}
		}
	}
}

// Connections of one worker echoing through every kind of send at random,
// beside peers that never read (holding pool slots, forwarded buffers and,
// on zero copy, unacknowledged bytes), peers that reset mid-stream,
// pipelining peers and connections the server cancels, on a small pool
// and ring: each peer reads exactly its own bytes (a prefix of them where
// its connection was cut), every release runs once and every pool slot
// comes back. (It found one forward held by a peer that never reads
// stalling every parked connection: TestForwardHoldDoesNotStallParkedConnections.)
func TestMixedSendsIsolateConnections(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				cfg.SendZCThreshold = min(cfg.SendZCThreshold, 512)
				cfg.BufferCount, cfg.BufferSize = 32, 2048
				cfg.SendPoolSlots, cfg.SendSlotSize = 32, 4096
				cfg.MaxSendQueue = 24 << 10
				cfg.ShutdownTimeout = 300 * time.Millisecond // the peers that never read
				var refs, rels, whole, cut atomic.Int64
				errCut := errors.New("cut")
				rt := serve(t, cfg, mixedEcho(&refs, &rels))
				for range 3 {
					hog := dialRcvbuf(t, rt, 4096)
					go func() { _, _ = hog.Write(make([]byte, 1<<20)) }()
				}
				// What a peer read of what it sent: all of it, or a
				// prefix where the connection was cut (reset or cancelled).
				check := func(sent []byte, cl net.Conn) error {
					werr := writeAsync(cl, sent)
					got := make([]byte, len(sent))
					n, err := io.ReadFull(cl, got)
					if !bytes.Equal(got[:n], sent[:n]) {
						return fmt.Errorf("%d of the first %d bytes differ", countDiff(sent[:n], got[:n]), n)
					}
					if err != nil {
						if errors.Is(err, syscall.ECONNRESET) || err == io.ErrUnexpectedEOF || err == io.EOF {
							cut.Add(1)
							return errCut
						}
						return err
					}
					whole.Add(int64(n))
					return <-werr
				}
				runClients(t, 16, func(i int) error {
					cl, err := dialTCP(rt.Addr().String())
					if err != nil {
						return err
					}
					defer cl.Close()
					rng := rand.New(rand.NewSource(int64(i) + 100))
					if i%3 == 1 { // pipelined
						var all []byte
						for r := 0; r < 20; r++ {
							all = append(all, pattern(rng.Intn(20000)+1, byte(i*31+r))...)
						}
						if err := check(all, cl); err != errCut {
							return err
						}
						return nil
					}
					for r := 0; r < 20; r++ {
						msg := pattern(rng.Intn(20000)+1, byte(i*31+r))
						if i%4 == 3 && r == 10 { // reset mid-stream
							_, _ = cl.Write(msg)
							return cl.SetLinger(0)
						}
						if err := check(msg, cl); err == errCut {
							return nil
						} else if err != nil {
							return fmt.Errorf("round %d: %w", r, err)
						}
					}
					return nil
				})
				st := Total(rt.Stats())
				t.Logf("%d bytes echoed whole, %d cut; forwarded %d, SendWait %d, zero copy %d", whole.Load(), cut.Load(), st.ForwardedBuffers, st.SendWaits, st.ZeroCopySends)
				stop(t, rt)
				assert.Zero(t, st.TaskPanics)
				assert.Equal(t, refs.Load(), rels.Load(), "releases")
				assert.Zero(t, Total(rt.Stats()).SendSlotsInUse, "pool slots all returned")
			})
		}
	})
}

// refBehindFullSocket is the client side of the Ref tests: a peer with
// small socket buffers (and the server's accepted sockets made small too)
// sends "A", which makes the task fill its socket (filled), then msg,
// whose bytes the task references behind that full socket (refd reports
// the Submit). It returns the peer, which has read nothing yet.
func refBehindFullSocket(t *testing.T, rt *Runtime, filled chan struct{}, refd chan error, msg []byte) net.Conn {
	t.Helper()
	require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
	a := dialRcvbuf(t, rt, 4096)
	_, err := a.Write([]byte("A"))
	require.NoError(t, err)
	<-filled
	_, err = a.Write(msg)
	require.NoError(t, err)
	require.NoError(t, <-refd)
	return a
}
