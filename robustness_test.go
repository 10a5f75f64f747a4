package ringline

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// Robustness scenarios found in review: each once demonstrated a bug.

// readWithin reads exactly n bytes or fails after d.
func readWithin(c net.Conn, n int, d time.Duration) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, n)
	k, err := io.ReadFull(c, b)
	return b[:k], err
}

// A task may await the SendFuture of another connection on its worker (a
// proxy relaying to its upstream): the other connection's send completion
// must wake it, not only that connection's own task.
func TestAwaitOtherConnectionsFuture(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var first atomic.Pointer[ConnCtx]
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if first.CompareAndSwap(nil, &c) {
				echoTask(c)
				return
			}
			// Second connection: wait for a byte, relay to the first
			// connection, await that send, then answer our own peer.
			if c.WithData(func(b []byte) ParseResult { return Consumed(1) }) == 0 {
				return
			}
			other := *first.Load()
			fut, err := other.Send([]byte("hello"))
			if err != nil {
				c.SendNowait([]byte("ERR1"))
				return
			}
			if _, err := fut.Await(); err != nil {
				c.SendNowait([]byte("ERR2"))
				return
			}
			c.SendNowait([]byte("done"))
			echoTask(c)
		})
		c1 := dial(t, rt)
		require.Equal(t, []byte("x"), roundTrip(t, c1, []byte("x"))) // c1's task is running
		c2 := dial(t, rt)
		_, err := c2.Write([]byte("g"))
		require.NoError(t, err)
		got, err := readWithin(c1, 5, 5*time.Second)
		require.NoError(t, err, "the relayed bytes reach the first peer")
		require.Equal(t, "hello", string(got))
		got, err = readWithin(c2, 4, 3*time.Second)
		require.NoError(t, err, "Await on the other connection's future never returned (task asleep)")
		require.Equal(t, "done", string(got))
	})
}

// NeedAtLeast(n) with n above MaxRecvAccumulator: once the accumulator
// reaches the limit the connection is closed (WithData returns 0, the limit
// close is counted and logged with its reason), rather than the task
// sleeping forever on a paused recv. The client never half-closes: the task
// must end on the limit alone, before any FIN from the peer.
func TestNeedAtLeastAboveLimitCloses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxRecvAccumulator = 256 << 10
		logs := captureLog(&cfg)
		ret := make(chan int, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			n := c.WithData(func(b []byte) ParseResult { return NeedAtLeast(1 << 20) })
			ret <- n
		})
		c := dial(t, rt)
		// More than the limit; the write is cut off by the close (or fits
		// in the socket buffers first), and the client never sends FIN.
		werr := writeAsync(c, make([]byte, 2<<20))
		select {
		case n := <-ret:
			require.Zero(t, n)
		case <-time.After(10 * time.Second):
			t.Fatal("connection not closed at the accumulator limit: task asleep forever with recv paused")
		}
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).LimitCloses == 1 }),
			"LimitCloses = %d, want 1", Total(rt.Stats()).LimitCloses)
		assert.Contains(t, logs.String(), "receive accumulator limit")
		// The peer sees the close: EOF, or a reset because its bytes were
		// left unread.
		_, err := io.ReadAll(c)
		if err != nil {
			require.ErrorIs(t, err, syscall.ECONNRESET)
		}
		if err := <-werr; err != nil {
			require.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE), "write: %v", err)
		}
	})
}

// A parse closure must not suspend: awaiting inside it would let the loop
// recycle the kernel buffer the closure is reading. The task panics with a
// clear message, only its connection closes (after the bytes it queued are
// sent, exactly once), and the worker and other connections keep going.
func TestSuspendInsideParseClosureClosesOnlyItsConnection(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			for {
				n := c.WithData(func(b []byte) ParseResult {
					if string(b) != "bad" {
						c.SendNowait(b)
						return Consumed(len(b))
					}
					fut, err := c.Send(b)
					if err != nil {
						return Consumed(0)
					}
					fut.Await() // not allowed here
					return Consumed(len(b))
				})
				if n == 0 {
					return
				}
			}
		})
		good := dial(t, rt)
		bad := dial(t, rt)
		require.Equal(t, "ok", string(roundTrip(t, good, []byte("ok"))))
		_, err := bad.Write([]byte("bad"))
		require.NoError(t, err)
		got, err := io.ReadAll(bad)
		require.NoError(t, err)
		assert.Equal(t, "bad", string(got), "the queued echo goes out once, then the connection closes")
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).TaskPanics == 1 }))
		require.Equal(t, "still", string(roundTrip(t, good, []byte("still"))))
	})
}

// Parsing the same connection from inside its own parse closure is refused
// (a panic that closes that connection), never a corrupted receive state.
func TestNestedParseRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				c.TryWithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				return Consumed(len(b))
			})
		})
		c := dial(t, rt)
		_, err := c.Write([]byte("x"))
		require.NoError(t, err)
		_, err = io.ReadAll(c)
		require.NoError(t, err)
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).TaskPanics == 1 }))
	})
}

// Handles compare the full 32-bit generation, while completions carry only
// its low 16 bits: a handle 65,536 generations old must not look live.
func TestGenerationFullWidth(t *testing.T) {
	w := &worker{}
	cn := &conn{w: w, idx: 0, gen: 70000, state: connOpen, lent: -1}
	w.conns = []*conn{cn}
	require.NotNil(t, ConnCtx{w: w, idx: 0, gen: 70000}.get())
	require.Nil(t, ConnCtx{w: w, idx: 0, gen: 70000 - 65536}.get(), "stale handle with equal low 16 bits")
	require.Equal(t, uint16(70000&0xffff), udGen(packUD(udRecv, 0, cn.gen, 0)))
	require.Equal(t, ConnToken{Index: 0, Generation: 70000}, ConnCtx{w: w, idx: 0, gen: 70000}.Token())
}

// SetRecvSink inside a WithData closure (parse a length header, then
// direct the body into a buffer) takes effect after the closure's Consumed
// is applied: the sink gets the body, not the header. Both the lent-buffer
// path (header and body in one segment) and the accumulator path (header
// arrives alone first) are covered.
func TestSetRecvSinkInsideWithData(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		{
			rt := serve(t, testConfig(be), func(c ConnCtx) {
				for {
					var body []byte
					n := c.WithData(func(b []byte) ParseResult {
						if len(b) < 1 {
							return NeedAtLeast(1)
						}
						body = make([]byte, int(b[0]))
						c.SetRecvSink(body)
						return Consumed(1)
					})
					if n == 0 {
						return
					}
					for c.RecvReady() {
						if c.TakeRecvSink() == len(body) {
							break
						}
						// not complete: keep the sink (re-set at the offset reached)
						c.SetRecvSink(body)
					}
					c.SendNowait(body)
				}
			})
			c := dial(t, rt)
			msg := append([]byte{5}, "hello"...)
			_, err := c.Write(msg)
			require.NoError(t, err)
			got, err := readWithin(c, 5, 3*time.Second)
			require.NoError(t, err)
			require.Equal(t, "hello", string(got), "the sink must hold the body, not the header")
			// Header alone, then header+body of the next: accumulator path.
			_, err = c.Write([]byte{3})
			require.NoError(t, err)
			time.Sleep(20 * time.Millisecond)
			_, err = c.Write([]byte("abc\x02xy"))
			require.NoError(t, err)
			got, err = readWithin(c, 5, 3*time.Second)
			require.NoError(t, err)
			require.Equal(t, "abcxy", string(got))
		}
	})
}
