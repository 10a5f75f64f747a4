//go:build amd64 && !race && !ringline_nogetg

package ringline

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A task starts on a 2 KiB goroutine stack and keeps whatever it grew to
// for the rest of its life: at 10,000 idle connections, tasks that
// outgrew 2 KiB cost 20 MB more (the idle-connection RSS figure doubled
// once this way). The frames under a handler (the coroutine, the receive
// path, the send path) are kept small enough that a plain echo handler
// (WithData, Send inside the closure, Await) never grows its stack. A
// stack that grows is copied elsewhere, so a local's address that changes
// between the task's start and its second wait is the test. The budget
// is measured for amd64 with the fast goroutine identity (internal/gid):
// not under the race detector, whose instrumentation makes every frame
// larger, nor with ringline_nogetg, whose runtime.Stack identity is deep.
//
// With idle set, the handler also renews a read deadline before every
// receive, as an idle timeout does: the connection's first deadline makes
// its connTimers, which must not be allocated on the task's stack.
func TestTaskStackDoesNotGrow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		t.Run("plain", func(t *testing.T) { testTaskStack(t, be, false) })
		t.Run("idle-timeout", func(t *testing.T) { testTaskStack(t, be, true) })
	})
}

func testTaskStack(t *testing.T, be Backend, idle bool) {
	cfg := testConfig(be)
	cfg.MaxConnections = 4096
	var moved, served atomic.Int32
	rt := serve(t, cfg, func(c ConnCtx) {
		var anchor byte
		start := uintptr(unsafe.Pointer(&anchor))
		for i := 0; ; i++ {
			if idle {
				if c.SetReadDeadline(time.Now().Add(time.Hour)) != nil {
					return
				}
			}
			var fut SendFuture
			var err error
			if c.WithData(func(b []byte) ParseResult {
				if fut, err = c.Send(b); err != nil {
					c.Close()
					return Consumed(0)
				}
				return Consumed(len(b))
			}) == 0 || err != nil {
				return
			}
			if _, err := fut.Await(); err != nil {
				return
			}
			if i == 0 {
				if uintptr(unsafe.Pointer(&anchor)) != start {
					moved.Add(1)
				}
				served.Add(1)
			}
		}
	})
	const n = 500
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		c := dial(t, rt)
		conns = append(conns, c)
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		_, err := c.Write([]byte("hello"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, make([]byte, 5))
		require.NoError(t, err)
	}
	require.True(t, settle(10*time.Second, func() bool { return served.Load() == n }))
	t.Logf("%d of %d tasks grew their stack serving one echo", moved.Load(), n)
	assert.Zero(t, moved.Load(), "a task's stack grew: a frame on the receive or send path got larger")
}

// Tasks that sleep all at once, each borrowing a pooled timer node and
// giving it back, keep their 2 KiB stacks: the pool's slice has room for
// every node, so giving one back never grows it on a task's stack.
func TestSleepingTasksKeepTheirStacks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxConnections = 4096
		var moved1, moved2, served atomic.Int32
		rt := serve(t, cfg, func(c ConnCtx) {
			var anchor byte
			start := uintptr(unsafe.Pointer(&anchor))
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			_ = c.Task().Sleep(50 * time.Millisecond)
			if uintptr(unsafe.Pointer(&anchor)) != start {
				moved1.Add(1)
			}
			_ = c.Task().Sleep(50 * time.Millisecond)
			if uintptr(unsafe.Pointer(&anchor)) != start {
				moved2.Add(1)
			}
			served.Add(1)
			c.SendNowait([]byte("x"))
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		const n = 400
		conns := make([]net.Conn, 0, n)
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := 0; i < n; i++ {
			c := dial(t, rt)
			conns = append(conns, c)
			_, err := c.Write([]byte("h"))
			require.NoError(t, err)
		}
		for _, c := range conns {
			_, err := io.ReadFull(c, make([]byte, 1))
			require.NoError(t, err)
		}
		t.Logf("%d tasks: stack grew by first Sleep's end in %d, by the second's in %d", served.Load(), moved1.Load(), moved2.Load())
		assert.Equal(t, int32(n), served.Load())
		assert.Zero(t, moved1.Load()+moved2.Load(), "a sleeping task's stack grew")
	})
}
