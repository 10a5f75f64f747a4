package ringline

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A client that pipelines requests for a large value and never reads can
// queue at most MaxSendQueue bytes: past it its own sends fail with
// ErrSendQueueFull, and every other connection's small replies still go
// out (before the bound, one hog took the whole pool and everyone else got
// ErrSendPoolExhausted, even after the hog left).
func TestSendQueueCapIsolatesHog(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be) // pool 512 x 4 KiB = 2 MiB; MaxSendQueue 512 KiB
		value := pattern(16<<10, 5)
		errs := make(chan error, 4)
		rt := serve(t, cfg, func(c ConnCtx) {
			for {
				var err error
				n := c.WithData(func(b []byte) ParseResult {
					for i := range b {
						if b[i] == 'G' { // GET: reply with the large value
							if err = c.SendNowait(value); err != nil {
								return Consumed(i + 1)
							}
						} else if err = c.SendNowait(b[i : i+1]); err != nil {
							return Consumed(i + 1)
						}
					}
					return Consumed(len(b))
				})
				if err != nil {
					errs <- err
					return // a real server would close the hog
				}
				if n == 0 {
					return
				}
			}
		})
		hog := dial(t, rt)
		require.NoError(t, hog.SetReadBuffer(4096))
		_, err := hog.Write(bytes.Repeat([]byte("G"), 3000))
		require.NoError(t, err)
		select {
		case err := <-errs:
			require.ErrorIs(t, err, ErrSendQueueFull)
		case <-time.After(10 * time.Second):
			t.Fatal("the hog was never refused")
		}
		require.True(t, settle(2*time.Second, func() bool { return Total(rt.Stats()).SendQueueFull > 0 }))
		assert.Zero(t, Total(rt.Stats()).SendPoolExhausted)
		// Others are served while the hog's bytes are still queued.
		for i := 0; i < 3; i++ {
			good := dial(t, rt)
			require.Equal(t, []byte("abc"), roundTrip(t, good, []byte("abc")))
		}
		assert.Zero(t, Total(rt.Stats()).SendPoolExhausted)
	})
}

// A task that returns with bytes queued to a peer that never reads pins
// pool slots only until CloseDrainTimeout: then the connection is reset,
// its slots freed, and Err says ErrDrainTimeout.
func TestCloseDrainTimeoutFreesSlots(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.CloseDrainTimeout = 300 * time.Millisecond
		cfg.MaxSendQueue = cfg.SendPoolSlots * cfg.SendSlotSize
		rt := serve(t, cfg, func(c ConnCtx) {
			// Small kernel buffers, so most of the queue stays in the pool.
			_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			for c.SendNowait(pattern(64<<10, 1)) == nil {
			}
			// returns: the connection closes after its queue drains
		})
		cl, err := (&net.Dialer{Timeout: 5 * time.Second, Control: smallRcvbuf}).Dial("tcp", rt.Addr().String())
		require.NoError(t, err)
		defer cl.Close()
		_, err = cl.Write([]byte("go"))
		require.NoError(t, err)
		require.True(t, settle(2*time.Second, func() bool { return Total(rt.Stats()).SendSlotsInUse > 100 }),
			"the task queued its sends")
		start := time.Now()
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).SendSlotsInUse == 0 }),
			"slots still in use: %d", Total(rt.Stats()).SendSlotsInUse)
		took := time.Since(start)
		assert.GreaterOrEqual(t, took, 150*time.Millisecond, "not before the drain timeout")
		st := Total(rt.Stats())
		assert.Equal(t, uint64(1), st.DrainTimeouts)
		// The peer sees a reset once it reads past what was delivered.
		_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, cl)
		require.True(t, errors.Is(err, syscall.ECONNRESET), "peer sees a reset, got %v", err)
	})
}

// A peer that reads gets every byte queued before the close: the drain
// deadline does not cut a drain that finishes in time.
func TestCloseDrainDeliversToReadingPeer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.CloseDrainTimeout = 5 * time.Second
		msg := pattern(1<<20, 3)
		cfg.MaxSendQueue = cfg.SendPoolSlots * cfg.SendSlotSize
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			for off := 0; off < len(msg); off += 64 << 10 {
				if err := c.SendNowait(msg[off : off+64<<10]); err != nil {
					panic(err)
				}
			}
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		got, err := io.ReadAll(cl)
		require.NoError(t, err)
		require.True(t, bytes.Equal(msg, got))
		assert.Zero(t, Total(rt.Stats()).DrainTimeouts)
	})
}

// ENOBUFS parking re-arms only as many connections as free buffers can
// serve, so on a tiny ring shared by many busy connections ENOBUFS events
// stay rare next to buffer fills (they outnumbered them when every parked
// connection was re-armed every iteration), and every byte arrives.
func TestENOBUFSRearmIsBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferCount = 16
		cfg.BufferSize = 4096
		rt := serve(t, cfg, echoTask)
		const conns, size = 200, 64 << 10
		var wg sync.WaitGroup
		errs := make(chan error, conns)
		for i := 0; i < conns; i++ {
			c, err := net.DialTimeout("tcp", rt.Addr().String(), 5*time.Second)
			require.NoError(t, err)
			defer c.Close()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = c.SetDeadline(time.Now().Add(60 * time.Second))
				msg := pattern(size, byte(i))
				go func() { _, _ = c.Write(msg) }()
				got := make([]byte, size)
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(msg, got) {
					errs <- errors.New("echo mismatch")
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		st := Total(rt.Stats())
		fills := st.BytesIn / uint64(cfg.BufferSize) // at least this many buffers were filled
		t.Logf("ENOBUFS %d, buffer fills >= %d", st.ENOBUFS, fills)
		assert.NotZero(t, st.ENOBUFS, "the ring ran dry")
		// Measured: about 1 ENOBUFS per 16 buffers filled; 2 per buffer
		// when every parked connection was re-armed each iteration, 0.8
		// when as many were re-armed as buffers were free.
		assert.Less(t, st.ENOBUFS, fills/4, "ENOBUFS events per buffer filled")
	})
}

// A value retained from WithBytes pins an array sized to its message, not
// a 4 KiB one: 5,000 one-byte values cost well under 1 KiB each.
func TestRetainedBytesDoNotPinLargeArrays(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		const n = 5000
		kept := make([]Bytes, 0, n)
		done := make(chan struct{})
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			for len(kept) < n {
				if c.WithBytes(func(b Bytes) ParseResult {
					kept = append(kept, b[:1])
					return Consumed(len(b))
				}) == 0 {
					return
				}
				c.SendNowait([]byte{'k'})
			}
			close(done)
			echoTask(c)
		})
		cl := dial(t, rt)
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		var ack [1]byte
		for i := 0; i < n; i++ {
			_, err := cl.Write([]byte{byte(i)})
			require.NoError(t, err)
			_, err = io.ReadFull(cl, ack[:])
			require.NoError(t, err)
		}
		<-done
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		per := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / n
		t.Logf("heap per retained one-byte value: %.0f B", per)
		assert.Less(t, per, 512.0)
		runtime.KeepAlive(kept)
	})
}

// smallRcvbuf sets a 4 KiB receive buffer before connect, so the window the
// client advertises stays small.
func smallRcvbuf(network, address string, rc syscall.RawConn) error {
	var err error
	_ = rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) })
	return err
}
