package ringline

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// 100 SendNowaits with no await between them arrive complete and in order.
func TestSendNowaitOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			for i := 0; i < 100; i++ {
				if err := c.SendNowait([]byte(fmt.Sprintf("msg-%03d;", i))); err != nil {
					panic(err)
				}
			}
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		got := make([]byte, 800)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		var want strings.Builder
		for i := 0; i < 100; i++ {
			fmt.Fprintf(&want, "msg-%03d;", i)
		}
		require.Equal(t, want.String(), string(got))
	})
}

// A message larger than one provided buffer is reassembled by a parser that
// needs it whole.
func TestMessageLargerThanBuffer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		const size = 3*4096 + 123 // BufferSize is 4096
		got := make(chan []byte, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				if len(b) < size {
					return NeedAtLeast(size)
				}
				got <- append([]byte(nil), b[:size]...)
				return Consumed(size)
			})
		})
		cl := dial(t, rt)
		msg := pattern(size, 9)
		_, err := cl.Write(msg)
		require.NoError(t, err)
		select {
		case b := <-got:
			require.True(t, bytes.Equal(msg, b))
		case <-time.After(10 * time.Second):
			t.Fatal("parser never saw the whole message")
		}
	})
}

// A length-prefixed parse fed one byte per write completes once, with the
// closure re-run as bytes trickle in.
func TestWithDataOneByteAtATime(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type res struct {
			body  string
			calls int
		}
		out := make(chan res, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			calls := 0
			var body string
			c.WithData(func(b []byte) ParseResult {
				calls++
				if len(b) < 1 || len(b) < 1+int(b[0]) {
					return NeedMore()
				}
				body = string(b[1 : 1+b[0]])
				return Consumed(1 + int(b[0]))
			})
			out <- res{body, calls}
		})
		cl := dial(t, rt)
		msg := append([]byte{11}, "hello world"...)
		for _, ch := range msg {
			_, err := cl.Write([]byte{ch})
			require.NoError(t, err)
			time.Sleep(2 * time.Millisecond)
		}
		select {
		case r := <-out:
			assert.Equal(t, "hello world", r.body)
			assert.GreaterOrEqual(t, r.calls, 2, "closure must re-run after NeedMore")
		case <-time.After(10 * time.Second):
			t.Fatal("parse never completed")
		}
	})
}

// Bytes retained from WithBytes stay intact while more data arrives and is
// consumed.
func TestWithBytesRetained(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type kept struct {
			b    Bytes
			want []byte
		}
		done := make(chan []kept, 1)
		total := 0
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			var ks []kept
			for total < 64*1000 {
				n := c.WithBytes(func(b Bytes) ParseResult {
					if len(b) < 1000 {
						return NeedAtLeast(1000)
					}
					if len(b) != cap(b) {
						panic("Bytes capacity not clipped")
					}
					ks = append(ks, kept{b: b[:1000:1000], want: append([]byte(nil), b[:1000]...)})
					return Consumed(1000)
				})
				if n == 0 {
					break
				}
				total += n
			}
			done <- ks
		})
		cl := dial(t, rt)
		data := pattern(64*1000, 3)
		for off := 0; off < len(data); off += 1500 {
			end := min(off+1500, len(data))
			_, err := cl.Write(data[off:end])
			require.NoError(t, err)
		}
		select {
		case ks := <-done:
			require.Len(t, ks, 64)
			for i, k := range ks {
				require.True(t, bytes.Equal(k.want, k.b), "retained slice %d changed", i)
				require.True(t, bytes.Equal(data[i*1000:(i+1)*1000], []byte(k.b)), "slice %d wrong data", i)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("timeout")
		}
	})
}

// TryWithData reports false with nothing buffered and runs f when there is
// data, never suspending.
func TestTryWithData(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type res struct {
			emptyOK, dataOK bool
			data            string
			n               int
		}
		out := make(chan res, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			var r res
			called := false
			_, r.emptyOK = c.TryWithData(func(b []byte) ParseResult { called = true; return Consumed(len(b)) })
			if called {
				panic("TryWithData called f with nothing buffered")
			}
			if _, err := c.Send([]byte("ready")); err != nil {
				panic(err)
			}
			// Wait for data without consuming it, then try.
			if !c.RecvReady() {
				panic("RecvReady false")
			}
			var pr ParseResult
			pr, r.dataOK = c.TryWithData(func(b []byte) ParseResult { r.data = string(b); return Consumed(2) })
			r.n = pr.consumed
			// The unconsumed rest is still there.
			c.WithData(func(b []byte) ParseResult { r.data += "|" + string(b); return Consumed(len(b)) })
			out <- r
		})
		cl := dial(t, rt)
		buf := make([]byte, 5)
		_, err := io.ReadFull(cl, buf)
		require.NoError(t, err)
		_, err = cl.Write([]byte("abcd"))
		require.NoError(t, err)
		select {
		case r := <-out:
			assert.False(t, r.emptyOK)
			assert.True(t, r.dataOK)
			assert.Equal(t, 2, r.n)
			assert.Equal(t, "abcd|cd", r.data)
		case <-time.After(10 * time.Second):
			t.Fatal("timeout")
		}
	})
}

// The recv sink receives bytes directly; TakeRecvSink reports how many.
func TestRecvSink(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan string, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			buf := make([]byte, 10)
			got := 0
			for got < 10 {
				c.SetRecvSink(buf[got:])
				if !c.RecvReady() {
					break
				}
				got += c.TakeRecvSink()
			}
			// What exceeded the sink is in the accumulator.
			rest := ""
			c.WithData(func(b []byte) ParseResult {
				if len(b) < 5 {
					return NeedMore()
				}
				rest = string(b)
				return Consumed(len(b))
			})
			out <- string(buf[:got]) + "|" + rest
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("0123456789ABCDE"))
		require.NoError(t, err)
		select {
		case s := <-out:
			require.Equal(t, "0123456789|ABCDE", s)
		case <-time.After(10 * time.Second):
			t.Fatal("timeout")
		}
	})
}

// An exhausted send pool returns ErrSendPoolExhausted; once the peer reads
// and slots free up, the same connection sends again.
func TestSendPoolExhaustionRecovers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.SendPoolSlots = 16
		cfg.SendSlotSize = 4096
		cfg.MaxSendQueue = 16 * 4096 // one connection may fill the pool here
		type res struct {
			queued   int
			firstErr error
			after    error
			n        int
		}
		out := make(chan res, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			var r res
			chunk := pattern(4096, 1)
			var last SendFuture
			for i := 0; i < 10000; i++ {
				f, err := c.Send(chunk)
				if err != nil {
					r.firstErr = err
					break
				}
				last = f
				r.queued += len(chunk)
			}
			// Tell the client to start reading; wait for all queued bytes.
			_, _ = last.Await()
			f, err := c.Send([]byte("tail"))
			r.after = err
			if err == nil {
				r.n, r.after = f.Await()
			}
			out <- r
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		require.NoError(t, cl.SetReadBuffer(4096))
		time.Sleep(100 * time.Millisecond) // let the server fill the pool and kernel buffers
		total := 0
		buf := make([]byte, 64<<10)
		var r res
		got := false
		for !got {
			n, err := cl.Read(buf)
			require.NoError(t, err)
			total += n
			select {
			case r = <-out:
				got = true
			default:
			}
		}
		require.ErrorIs(t, r.firstErr, ErrSendPoolExhausted)
		require.NoError(t, r.after)
		require.Equal(t, 4, r.n)
		for total < r.queued+4 {
			n, err := cl.Read(buf)
			require.NoError(t, err)
			total += n
		}
		require.Equal(t, r.queued+4, total)
		require.GreaterOrEqual(t, Total(rt.Stats()).SendPoolExhausted, uint64(1))
	})
}

// A tiny buffer ring shared by many busy connections runs out (ENOBUFS)
// and recovers without losing bytes, and the idle loop does not spin.
func TestTinyBufferRingRecovers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferCount = 2
		cfg.BufferSize = 1024
		cfg.MaxRecvAccumulator = 1 << 20
		rt := serve(t, cfg, echoTask)
		runClients(t, 32, func(i int) error {
			return echoCheck(rt.Addr().String(), pattern(64<<10, byte(i)))
		})
		st := Total(rt.Stats())
		t.Logf("ENOBUFS events: %d", st.ENOBUFS)
		assert.Greater(t, st.ENOBUFS, uint64(0), "2 buffers for 32 connections should run out")
		// Idle: the loop must block, not spin.
		time.Sleep(50 * time.Millisecond)
		before := Total(rt.Stats()).LoopIterations
		time.Sleep(300 * time.Millisecond)
		after := Total(rt.Stats()).LoopIterations
		assert.Less(t, after-before, uint64(20), "idle loop iterated %d times in 300ms", after-before)
	})
}

// Peer close: WithData returns 0.
func TestPeerCloseWithDataReturnsZero(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan int, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			n1 := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			n2 := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			out <- n1*1000 + n2
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("xyz"))
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		require.NoError(t, cl.Close())
		select {
		case v := <-out:
			assert.Equal(t, 3000, v)
		case <-time.After(10 * time.Second):
			t.Fatal("WithData did not return 0 after peer close")
		}
	})
}

// Half-close: everything sent before the client's FIN is echoed, then the
// server closes.
func TestPeerHalfCloseEchoesAll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		cl := dial(t, rt)
		msg := pattern(512<<10, 4)
		werr := make(chan error, 1)
		go func() {
			_, err := cl.Write(msg)
			if err == nil {
				err = cl.CloseWrite()
			}
			werr <- err
		}()
		got, err := io.ReadAll(cl)
		require.NoError(t, err)
		require.NoError(t, <-werr)
		require.True(t, bytes.Equal(msg, got), "got %d of %d bytes", len(got), len(msg))
	})
}

// A client that stops reading loses nothing and does not slow others.
func TestSlowReaderNoLossNoStall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxRecvAccumulator = 256 << 10
		rt := serve(t, cfg, echoTask)
		slow := dial(t, rt)
		msg := pattern(8<<20, 5)
		werr := make(chan error, 1)
		go func() { _, err := slow.Write(msg); werr <- err }()
		// While the slow client is not reading, others are served promptly.
		time.Sleep(200 * time.Millisecond)
		for i := 0; i < 20; i++ {
			c := dial(t, rt)
			start := time.Now()
			p := pattern(1000, byte(i))
			require.True(t, bytes.Equal(p, roundTrip(t, c, p)))
			require.Less(t, time.Since(start), 2*time.Second)
		}
		got := make([]byte, len(msg))
		_, err := io.ReadFull(slow, got)
		require.NoError(t, err)
		require.NoError(t, <-werr)
		require.True(t, bytes.Equal(msg, got))
		assert.Zero(t, Total(rt.Stats()).LimitCloses)
	})
}

// A peer reset mid-stream ends that connection with an error; others keep
// working.
func TestPeerResetMidStream(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ended := make(chan struct{}, 4)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			echoTask(c)
			ended <- struct{}{}
		})
		other := dial(t, rt)
		cl := dial(t, rt)
		_, err := cl.Write(pattern(100<<10, 1))
		require.NoError(t, err)
		require.NoError(t, cl.SetLinger(0))
		require.NoError(t, cl.Close()) // RST
		select {
		case <-ended:
		case <-time.After(10 * time.Second):
			t.Fatal("reset connection's task did not end")
		}
		p := pattern(5000, 2)
		require.True(t, bytes.Equal(p, roundTrip(t, other, p)))
	})
}

// A peer sending more than MaxRecvAccumulator without the parser making
// progress is closed with a logged reason; other connections are
// unaffected.
func TestAccumulatorLimitCloses(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxRecvAccumulator = 64 << 10
		logs := captureLog(&cfg)
		rt := serve(t, cfg, func(c ConnCtx) {
			// A parser waiting for a newline that never comes.
			c.WithData(func(b []byte) ParseResult {
				if i := bytes.IndexByte(b, '\n'); i >= 0 {
					c.SendNowait(b[:i+1])
					return Consumed(i + 1)
				}
				return NeedMore()
			})
			echoTask(c)
		})
		good := dial(t, rt)
		bad := dial(t, rt)
		werr := writeAsync(bad, bytes.Repeat([]byte("x"), 1<<20))
		_, err := io.ReadAll(bad)
		// The server closed: EOF (nil) or a reset.
		if err != nil {
			require.True(t, errors.Is(err, syscall.ECONNRESET), "unexpected error %v", err)
		}
		// The write either fitted in the socket buffers before the close
		// or was cut off by it; nothing else.
		if err := <-werr; err != nil {
			require.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE), "unexpected write error %v", err)
		}
		require.Equal(t, uint64(1), Total(rt.Stats()).LimitCloses)
		require.Contains(t, logs.String(), "receive accumulator limit", "the close is logged with its reason")
		require.Equal(t, []byte("ok\n"), roundTrip(t, good, []byte("ok\n")))
	})
}

// A panicking task closes only its own connection, and the panic is
// logged with its value.
func TestTaskPanicIsolation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		logs := captureLog(&cfg)
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				if string(b) == "boom" {
					panic("handler bug")
				}
				c.SendNowait(b)
				return Consumed(len(b))
			})
			echoTask(c)
		})
		good := dial(t, rt)
		bad := dial(t, rt)
		require.Equal(t, []byte("hi"), roundTrip(t, good, []byte("hi")))
		_, err := bad.Write([]byte("boom"))
		require.NoError(t, err)
		_, err = io.ReadAll(bad)
		require.NoError(t, err, "panicking connection should be closed cleanly")
		require.Equal(t, []byte("still"), roundTrip(t, good, []byte("still")))
		require.Equal(t, uint64(1), Total(rt.Stats()).TaskPanics)
		log := logs.String()
		require.Contains(t, log, "level=ERROR")
		require.Contains(t, log, "panic")
		require.Contains(t, log, "handler bug", "the log names the panic value")
	})
}

// A ConnCtx kept after its connection closed is refused once its slot is
// reused, and never touches the new connection.
func TestStaleHandleRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var first atomic.Pointer[ConnCtx]
		type res struct {
			sameSlot bool
			sendErr  error
			n        int
			peerOK   bool
		}
		out := make(chan res, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if first.CompareAndSwap(nil, &c) {
				c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				return
			}
			old := *first.Load()
			var r res
			r.sameSlot = old.Index() == c.Index()
			r.sendErr = old.SendNowait([]byte("LEAK"))
			r.n = old.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			_, r.peerOK = old.PeerAddr()
			old.Close()
			out <- r
			c.SendNowait([]byte("new"))
			echoTask(c)
		})
		c1 := dial(t, rt)
		_, err := c1.Write([]byte("a"))
		require.NoError(t, err)
		c1.Close()
		time.Sleep(100 * time.Millisecond)
		c2 := dial(t, rt)
		var r res
		select {
		case r = <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("timeout")
		}
		require.True(t, r.sameSlot, "the slot should have been reused")
		require.ErrorIs(t, r.sendErr, ErrStale)
		require.ErrorIs(t, r.sendErr, ErrClosed)
		require.Zero(t, r.n)
		require.False(t, r.peerOK)
		buf := make([]byte, 3)
		_, err = io.ReadFull(c2, buf)
		require.NoError(t, err)
		require.Equal(t, "new", string(buf), "stale handle must not write to the new connection")
		require.Equal(t, []byte("alive"), roundTrip(t, c2, []byte("alive")))
	})
}

// Shutdown stops every worker and leaves no goroutine or fd behind.
func TestShutdownNoLeaks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		runtime.GC()
		g0 := runtime.NumGoroutine()
		fd0 := allFDs(t)
		cfg := testConfig(be)
		cfg.Workers = 2
		rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		var clients []net.Conn
		for i := 0; i < 10; i++ {
			c, err := dialTCP(rt.Addr().String())
			require.NoError(t, err)
			clients = append(clients, c)
			p := pattern(100, byte(i))
			require.Equal(t, p, roundTrip(t, c, p))
		}
		// A task that never returns on its own is stopped too.
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown hung")
		}
		for _, c := range clients {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(c)
			if err != nil {
				require.ErrorIs(t, err, syscall.ECONNRESET)
			}
			c.Close()
		}
		assert.True(t, settle(5*time.Second, func() bool { return runtime.NumGoroutine() <= g0 }),
			"goroutines: before %d, after %d", g0, runtime.NumGoroutine())
		assert.True(t, settle(5*time.Second, func() bool { return allFDs(t) <= fd0 }),
			"fds: before %d, after %d", fd0, allFDs(t))
	})
}

// A task stuck in a loop of its own (awaiting data that never comes) is
// stopped by Shutdown without leaking its coroutine.
func TestShutdownStopsBlockedTasks(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		g0 := runtime.NumGoroutine()
		started := make(chan struct{}, 1)
		rt, err := New(testConfig(be)).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
			return handlerFunc(func(c ConnCtx) {
				started <- struct{}{}
				for { // ignores WithData's 0 on purpose
					c.WithData(func(b []byte) ParseResult { return NeedMore() })
				}
			})
		})
		require.NoError(t, err)
		c, err := dialTCP(rt.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			rt.Shutdown()
			t.Fatal("the connection's task never started")
		}
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown hung on a task that never returns")
		}
		c.Close()
		assert.True(t, settle(5*time.Second, func() bool { return runtime.NumGoroutine() <= g0 }),
			"goroutines: before %d, after %d", g0, runtime.NumGoroutine())
	})
}

// Binding :0 reports the real port.
func TestBoundAddressReported(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		a, ok := rt.Addr().(*net.TCPAddr)
		require.True(t, ok)
		require.NotZero(t, a.Port)
		require.True(t, a.IP.IsLoopback())
		c := dial(t, rt)
		require.Equal(t, []byte("x"), roundTrip(t, c, []byte("x")))
	})
}

// Several workers each accept on their own SO_REUSEPORT listener.
func TestMultiWorkerAcceptSpread(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 4
		var seen sync.Map
		rt := serve(t, cfg, func(c ConnCtx) {
			seen.Store(c.WorkerID(), true)
			echoTask(c)
		})
		for i := 0; i < 200; i++ {
			c := dial(t, rt)
			require.Equal(t, []byte("w"), roundTrip(t, c, []byte("w")))
			c.Close()
		}
		n := 0
		seen.Range(func(any, any) bool { n++; return true })
		require.GreaterOrEqual(t, n, 2, "200 connections should reach more than one worker")
		for _, s := range rt.Stats() {
			t.Logf("worker %d accepted %d", s.Worker, s.Accepted)
		}
		require.Equal(t, uint64(200), Total(rt.Stats()).Accepted)
	})
}

// PeerAddr works on accepted sockets (fixed-file or not).
func TestPeerAddr(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan net.Addr, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			a, _ := c.PeerAddr()
			out <- a
			echoTask(c)
		})
		cl := dial(t, rt)
		select {
		case a := <-out:
			require.Equal(t, cl.LocalAddr().String(), a.String())
		case <-time.After(5 * time.Second):
			t.Fatal("timeout")
		}
	})
}

// Invalid Config values are refused with an error naming the field.
func TestConfigValidation(t *testing.T) {
	cases := map[string]Config{
		"Workers":             {Workers: -1},
		"RingEntries":         {RingEntries: 1000},
		"BufferCount":         {BufferCount: 3},
		"BufferSize":          {BufferSize: 10},
		"MaxConnections":      {MaxConnections: -5},
		"SendPoolSlots":       {SendPoolSlots: -1},
		"SendSlotSize":        {SendSlotSize: 1},
		"MaxRecvAccumulator":  {BufferSize: 8192, MaxRecvAccumulator: 4096},
		"ListenBacklog":       {ListenBacklog: -1},
		"Backend":             {Backend: Backend(9)},
		"TLS":                 {TLS: &tls.Config{NextProtos: []string{"h2"}}}, // no certificate
		"TLSHandshakeTimeout": {TLSHandshakeTimeout: -time.Second},
	}
	for field, cfg := range cases {
		_, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, field)
		require.Equal(t, field, ce.Field)
		require.Contains(t, err.Error(), "Config."+field)
	}
	d := DefaultConfig()
	require.NoError(t, d.validate())
	require.Equal(t, runtime.NumCPU(), d.Workers)
}

// Close after queued sends delivers every byte, then EOF.
func TestCloseAfterQueuedSendsDelivers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		msg := pattern(1<<20, 8)
		cfg := testConfig(be)
		cfg.MaxSendQueue = cfg.SendPoolSlots * cfg.SendSlotSize
		rt := serve(t, cfg, func(c ConnCtx) {
			for off := 0; off < len(msg); off += 64 << 10 {
				if err := c.SendNowait(msg[off : off+64<<10]); err != nil {
					panic(err)
				}
			}
			c.Close()
			if err := c.SendNowait([]byte("late")); !errors.Is(err, ErrClosed) {
				panic(fmt.Sprintf("send after Close: %v", err))
			}
		})
		cl := dial(t, rt)
		time.Sleep(50 * time.Millisecond) // the server closes before we read
		got, err := io.ReadAll(cl)
		require.NoError(t, err)
		require.True(t, bytes.Equal(msg, got), "got %d of %d bytes", len(got), len(msg))
	})
}

// Sends queued after the peer's FIN still reach it.
func TestSendAfterPeerFIN(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			var req []byte
			for c.WithData(func(b []byte) ParseResult { req = append(req, b...); return Consumed(len(b)) }) > 0 {
			}
			// EOF seen: answer anyway.
			f, err := c.Send(append([]byte("got:"), req...))
			if err != nil {
				panic(err)
			}
			f.Await()
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("question"))
		require.NoError(t, err)
		require.NoError(t, cl.CloseWrite())
		got, err := io.ReadAll(cl)
		require.NoError(t, err)
		require.Equal(t, "got:question", string(got))
	})
}

// Accepted sockets get TCP_NODELAY, whether they sit in the fixed-file
// table or not: the runtime keeps an ordinary fd for socket options.
func TestAcceptedSocketsNoDelay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan int, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			v, err := unix.GetsockoptInt(int(c.get().fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
			if err != nil {
				v = -1
			}
			out <- v
			echoTask(c)
		})
		dial(t, rt)
		select {
		case v := <-out:
			require.Equal(t, 1, v)
		case <-time.After(5 * time.Second):
			t.Fatal("timeout")
		}
	})
}
