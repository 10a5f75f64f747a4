package ringline

import (
	"bytes"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// taskEnd is what a task saw when its connection ended.
type taskEnd struct {
	n        int   // WithData's last result
	err      error // Err() then
	awaitErr error // Await of a send made after the end
	sendErr  error
}

// readUntilEnd reads until WithData returns 0 and reports Err, and what a
// send awaited afterwards says.
func readUntilEnd(c ConnCtx) taskEnd {
	var e taskEnd
	for {
		e.n = c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		if e.n == 0 {
			break
		}
	}
	e.err = c.Err()
	f, err := c.Send(bytes.Repeat([]byte("z"), 64<<10))
	e.sendErr = err
	if err == nil {
		_, e.awaitErr = f.Await()
	}
	return e
}

// Err is nil after a clean FIN, and sends after a FIN still work.
func TestErrCleanFIN(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ends := make(chan taskEnd, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) { ends <- readUntilEnd(c) })
		cl := dial(t, rt)
		_, err := cl.Write([]byte("bye"))
		require.NoError(t, err)
		require.NoError(t, cl.CloseWrite())
		e := <-ends
		assert.NoError(t, e.err, "a clean FIN is not an error")
		assert.NoError(t, e.sendErr)
		assert.NoError(t, e.awaitErr, "sends after the peer's FIN are delivered")
	})
}

// After a reset, Err, a new send and the Await of a send in flight all
// report an error wrapping ECONNRESET, the same on both backends (the
// kernel reports the reset to whichever of recv and send asks first, and
// EPIPE to the other: the first cause is kept).
func TestErrAfterReset(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type res struct {
			err, awaitErr error
		}
		out := make(chan res, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			// Queue more than the socket buffers hold, so a send is in
			// flight when the reset comes.
			_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
			var f SendFuture
			for i := 0; i < 8; i++ {
				var err error
				if f, err = c.Send(bytes.Repeat([]byte("q"), 64<<10)); err != nil {
					break
				}
			}
			_, awaitErr := f.Await()
			for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
			}
			out <- res{c.Err(), awaitErr}
		})
		cl := dial(t, rt)
		require.NoError(t, cl.SetReadBuffer(4096))
		_, err := cl.Write([]byte("hello"))
		require.NoError(t, err)
		time.Sleep(50 * time.Millisecond)
		require.NoError(t, cl.SetLinger(0))
		require.NoError(t, cl.Close()) // RST
		var r res
		select {
		case r = <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("task did not end after the reset")
		}
		require.ErrorIs(t, r.err, syscall.ECONNRESET)
		require.ErrorIs(t, r.awaitErr, syscall.ECONNRESET)
		var op *net.OpError
		require.ErrorAs(t, r.err, &op)
	})
}

// A reset connection's WithData returns 0 and Err wraps ECONNRESET even when
// nothing was being sent.
func TestErrResetWhileReading(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ends := make(chan taskEnd, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) { ends <- readUntilEnd(c) })
		cl := dial(t, rt)
		_, err := cl.Write(pattern(10<<10, 1))
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		require.NoError(t, cl.SetLinger(0))
		require.NoError(t, cl.Close())
		e := <-ends
		require.ErrorIs(t, e.err, syscall.ECONNRESET)
		require.ErrorIs(t, e.sendErr, syscall.ECONNRESET, "a send after the reset reports it")
	})
}

// The runtime's own closes say why.
func TestErrRuntimeCloses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxRecvAccumulator = 64 << 10
		ends := make(chan error, 2)
		started := make(chan struct{}, 2)
		rt := serve(t, cfg, func(c ConnCtx) {
			started <- struct{}{}
			for c.WithData(func(b []byte) ParseResult {
				if b[0] == 'L' {
					return NeedMore() // never parses: hits the limit
				}
				return Consumed(len(b))
			}) > 0 {
			}
			ends <- c.Err()
		})
		limit := dial(t, rt)
		go limit.Write(bytes.Repeat([]byte("L"), 1<<20))
		select {
		case err := <-ends:
			require.ErrorIs(t, err, ErrRecvLimit)
		case <-time.After(10 * time.Second):
			t.Fatal("limit close did not end the task")
		}
		idle := dial(t, rt)
		_, err := idle.Write([]byte("i"))
		require.NoError(t, err)
		<-started
		<-started
		rt.Shutdown()
		select {
		case err := <-ends:
			require.ErrorIs(t, err, ErrShutdown)
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown did not end the task")
		}
		_, _ = io.ReadAll(idle)
	})
}

// Err on a stale handle says so.
func TestErrStale(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var prev ConnCtx
		out := make(chan error, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if prev.w == nil {
				prev = c
				return
			}
			out <- prev.Err()
		})
		a := dial(t, rt)
		_, _ = io.ReadAll(a)
		dial(t, rt)
		err := <-out
		require.True(t, errors.Is(err, ErrStale))
	})
}
