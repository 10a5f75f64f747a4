package ringline

import (
	"bytes"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// connMethods calls every ConnCtx method (and SendFuture.Await) once and
// reports, per method, whether it was refused: ErrNotInWorker, or the
// documented zero value.
func connMethods(c ConnCtx, f SendFuture) map[string]bool {
	called := false
	parse := func(b []byte) ParseResult { called = true; return Consumed(len(b)) }
	r := map[string]bool{}
	r["IsOutbound"] = !c.IsOutbound()
	a, ok := c.PeerAddr()
	r["PeerAddr"] = a == nil && !ok
	r["Err"] = errors.Is(c.Err(), ErrNotInWorker)
	r["SendNowait"] = errors.Is(c.SendNowait([]byte("foreign")), ErrNotInWorker)
	sf, err := c.Send([]byte("foreign"))
	r["Send"] = errors.Is(err, ErrNotInWorker) && sf == SendFuture{}
	_, err = f.Await()
	r["SendFuture.Await"] = errors.Is(err, ErrNotInWorker)
	r["WithData"] = c.WithData(parse) == 0 && !called
	r["WithBytes"] = c.WithBytes(func(b Bytes) ParseResult { called = true; return Consumed(len(b)) }) == 0 && !called
	_, ok = c.TryWithData(parse)
	r["TryWithData"] = !ok && !called
	c.SetRecvSink(make([]byte, 8))
	r["TakeRecvSink"] = c.TakeRecvSink() == 0
	r["RecvReady"] = !c.RecvReady()
	c.Close()
	r["Close"] = true // checked by the connection still echoing
	return r
}

// Every ConnCtx method called from an ordinary goroutine does nothing and
// reports ErrNotInWorker (or its zero value), reliably, while the worker
// runs that very task; the connection keeps working, the refusals are
// counted and logged, and nothing races (this test runs under -race in
// make test).
func TestForeignGoroutineRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		logs := captureLog(&cfg)
		handles := make(chan ConnCtx, 1)
		futs := make(chan SendFuture, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			f, _ := c.Send([]byte("hello\n"))
			handles <- c
			futs <- f
			echoTask(c)
		})
		cl := dial(t, rt)
		c := <-handles
		f := <-futs
		got, err := readWithin(cl, 6, 5*time.Second)
		require.NoError(t, err)
		require.Equal(t, "hello\n", string(got))

		// Hammer the methods from several goroutines while the client
		// keeps the task busy echoing: a foreign call must never run
		// the task's coroutine or touch its state.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var refused, calls atomic.Int64
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					for name, ok := range connMethods(c, f) {
						calls.Add(1)
						if ok {
							refused.Add(1)
						} else {
							t.Errorf("%s from a foreign goroutine was not refused", name)
							return
						}
					}
				}
			}()
		}
		msg := pattern(1000, 3)
		start := time.Now()
		for i := 0; i < 50; i++ {
			require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)), "echo %d", i)
		}
		close(stop)
		wg.Wait()
		require.Equal(t, calls.Load(), refused.Load())
		require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)), "the connection still works")
		require.True(t, settle(2*time.Second, func() bool { return Total(rt.Stats()).ForeignCalls >= uint64(calls.Load()) }),
			"ForeignCalls %d, want %d", Total(rt.Stats()).ForeignCalls, calls.Load())
		assert.Contains(t, logs.String(), "ErrNotInWorker")
		assert.Contains(t, logs.String(), "ownership_test.go", "the log names the caller")
		n := strings.Count(logs.String(), "ErrNotInWorker")
		assert.LessOrEqual(t, n, 2+int(time.Since(start)/time.Second), "refusals are logged at most once a second")
	})
}

// A SendNowait from a ticker goroutine used to race the worker and sit
// unsent until an unrelated event; now it is refused, and nothing arrives.
func TestForeignSendNowaitSendsNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		handles := make(chan ConnCtx, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			handles <- c
			echoTask(c)
		})
		cl := dial(t, rt)
		c := <-handles
		require.ErrorIs(t, c.SendNowait([]byte("tick")), ErrNotInWorker)
		_, err := readWithin(cl, 1, 200*time.Millisecond)
		require.Error(t, err, "nothing was sent")
		require.Equal(t, []byte("echo"), roundTrip(t, cl, []byte("echo")))
	})
}

// On the worker but outside a task (the handler factory), a suspending call
// has nothing to suspend: Await says ErrNotInTask.
func TestAwaitOutsideTask(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		futs := make(chan SendFuture, 1)
		errs := make(chan error, 1)
		var once sync.Once
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			f, err := c.Send(bytes.Repeat([]byte("x"), 1<<20/4))
			if err != nil {
				panic(err)
			}
			futs <- f
			echoTask(c)
		})
		cl := dial(t, rt)
		f := <-futs
		// Run the await on the worker's loop goroutine, outside any task.
		require.NoError(t, rt.workers[0].post(func() {
			once.Do(func() { _, err := f.Await(); errs <- err })
		}))
		select {
		case err := <-errs:
			if err != nil { // the send may already be complete (nil)
				require.ErrorIs(t, err, ErrNotInTask)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("post never ran")
		}
		_ = cl
	})
}

// WithData (and the other receive methods) on another connection's handle,
// from a task of the same worker, return 0 without running the closure
// over that connection's bytes or consuming them.
func TestReceiveOnOtherConnectionsHandle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var first atomic.Pointer[ConnCtx]
		type res struct {
			n      int
			tryOK  bool
			called bool
			ready  bool
			take   int
		}
		out := make(chan res, 1)
		aWaiting := make(chan struct{})
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if first.CompareAndSwap(nil, &c) {
				// A: wants 4 bytes; its client sends 2, then 2 more.
				var got []byte
				c.WithData(func(b []byte) ParseResult {
					if len(b) < 4 {
						if len(b) == 2 {
							close(aWaiting)
						}
						return NeedAtLeast(4)
					}
					got = append(got, b...)
					return Consumed(len(b))
				})
				c.SendNowait(got)
				echoTask(c)
				return
			}
			// B: once its own bytes arrive, tries A's.
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			other := *first.Load()
			var r res
			r.n = other.WithData(func(b []byte) ParseResult { r.called = true; return Consumed(len(b)) })
			_, r.tryOK = other.TryWithData(func(b []byte) ParseResult { r.called = true; return Consumed(len(b)) })
			r.ready = other.RecvReady()
			other.SetRecvSink(make([]byte, 16))
			r.take = other.TakeRecvSink()
			out <- r
			echoTask(c)
		})
		a := dial(t, rt)
		_, err := a.Write([]byte("AA"))
		require.NoError(t, err)
		select {
		case <-aWaiting:
		case <-time.After(5 * time.Second):
			t.Fatal("A never saw its first bytes")
		}
		b := dial(t, rt)
		_, err = b.Write([]byte("go"))
		require.NoError(t, err)
		var r res
		select {
		case r = <-out:
		case <-time.After(5 * time.Second):
			t.Fatal("B's task did not report")
		}
		assert.Zero(t, r.n, "WithData on another connection's handle")
		assert.False(t, r.called, "the closure never ran over the other connection's bytes")
		assert.False(t, r.tryOK, "TryWithData on another connection's handle")
		assert.False(t, r.ready, "RecvReady on another connection's handle")
		assert.Zero(t, r.take, "SetRecvSink/TakeRecvSink on another connection's handle")
		_, err = a.Write([]byte("BB"))
		require.NoError(t, err)
		got, err := readWithin(a, 4, 5*time.Second)
		require.NoError(t, err)
		require.Equal(t, "AABB", string(got), "A's bytes were left intact")
	})
}

// What the ownership check costs: "checked" calls c.Err() (the check plus
// a field read) in a loop inside a task, where the check compares against
// the running coroutine; "unchecked" does the same lookup without the
// check (what every method did before the thread-safety rule).
func BenchmarkConnCtxCheck(b *testing.B) {
	for _, be := range availableBackends() {
		for _, mode := range []string{"checked", "unchecked"} {
			b.Run(be.String()+"/"+mode, func(b *testing.B) {
				done := make(chan struct{})
				cfg := testConfig(be)
				cfg.StallThreshold = -1 // the loop below never yields, on purpose
				rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
					return handlerFunc(func(c ConnCtx) {
						b.ResetTimer()
						if mode == "checked" {
							for b.Loop() {
								if c.Err() != nil {
									panic("unexpected")
								}
							}
						} else {
							for b.Loop() {
								if cn := c.get(); cn == nil || cn.err != nil {
									panic("unexpected")
								}
							}
						}
						close(done)
					})
				})
				if err != nil {
					b.Fatal(err)
				}
				defer func() { rt.Shutdown(); rt.Wait() }()
				cl, err := net.Dial("tcp", rt.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				defer cl.Close()
				<-done
			})
		}
	}
}

// Every method refuses a stale handle (its slot now holds another
// connection): each returns its documented refusal, and the connection
// now in the slot is untouched: its buffered bytes, its deadlines, its
// sink, its open state.
func TestStaleHandleEveryMethod(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var first atomic.Pointer[ConnCtx]
		out := make(chan map[string]bool, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if first.CompareAndSwap(nil, &c) {
				c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				return
			}
			old := *first.Load()
			r := map[string]bool{"sameSlot": old.Index() == c.Index() && old.Token() != c.Token()}
			c.RecvReady() // the new connection's bytes are buffered now
			called := false
			parse := func(b []byte) ParseResult { called = true; return Consumed(len(b)) }
			r["Index"] = old.Index() == c.Index()
			r["WorkerID"] = old.WorkerID() == c.WorkerID()
			r["IsOutbound"] = !old.IsOutbound()
			a, ok := old.PeerAddr()
			r["PeerAddr"] = a == nil && !ok
			r["Err"] = errors.Is(old.Err(), ErrStale)
			r["SendNowait"] = errors.Is(old.SendNowait([]byte("LEAK")), ErrStale)
			f, err := old.Send([]byte("LEAK"))
			r["Send"] = errors.Is(err, ErrStale) && f == SendFuture{}
			r["WithData"] = old.WithData(parse) == 0 && !called
			r["WithBytes"] = old.WithBytes(func(b Bytes) ParseResult { called = true; return Consumed(len(b)) }) == 0 && !called
			_, ok = old.TryWithData(parse)
			r["TryWithData"] = !ok && !called
			old.SetRecvSink(make([]byte, 16))
			r["SetRecvSink"] = c.get().sink == nil
			r["TakeRecvSink"] = old.TakeRecvSink() == 0
			r["RecvReady"] = !old.RecvReady()
			r["SetDeadline"] = errors.Is(old.SetDeadline(time.Now()), ErrStale) && noDeadline(c.get(), false)
			r["SetReadDeadline"] = errors.Is(old.SetReadDeadline(time.Now()), ErrStale)
			r["SetWriteDeadline"] = errors.Is(old.SetWriteDeadline(time.Now()), ErrStale) && noDeadline(c.get(), true)
			i, err := Select(old.Readable())
			r["Readable"] = i == 0 && err == nil
			_, ok = old.TLSInfo()
			r["TLSInfo"] = !ok
			v := old.NetConn()
			_, err = v.Read(make([]byte, 4))
			r["NetConn.Read"] = errors.Is(err, net.ErrClosed)
			_, err = v.Write([]byte("LEAK"))
			r["NetConn.Write"] = errors.Is(err, net.ErrClosed)
			r["NetConn.SetDeadline"] = errors.Is(v.SetDeadline(time.Now()), net.ErrClosed) && noDeadline(c.get(), false)
			r["NetConn.Close"] = errors.Is(v.Close(), net.ErrClosed) && c.get().state == connOpen && !c.get().closeWanted
			old.Close()
			r["Close"] = c.get().state == connOpen && !c.get().closeWanted
			var got string
			c.WithData(func(b []byte) ParseResult { got = string(b); return Consumed(len(b)) })
			r["new connection's bytes intact"] = got == "mine"
			out <- r
			c.SendNowait([]byte("new"))
			echoTask(c)
		})
		c1 := dial(t, rt)
		_, err := c1.Write([]byte("a"))
		require.NoError(t, err)
		c1.Close()
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).Closed == 1 }))
		c2 := dial(t, rt)
		_, err = c2.Write([]byte("mine"))
		require.NoError(t, err)
		var r map[string]bool
		select {
		case r = <-out:
		case <-time.After(10 * time.Second):
			t.Fatal("timeout")
		}
		for name, ok := range r {
			assert.True(t, ok, "%s on a stale handle", name)
		}
		assert.Len(t, r, 25, "every method checked")
		got, err := readWithin(c2, 3, 5*time.Second)
		require.NoError(t, err)
		require.Equal(t, "new", string(got), "the stale handle wrote nothing")
		require.Equal(t, []byte("alive"), roundTrip(t, c2, []byte("alive")))
	})
}

// noDeadline reports whether cn has no read (or, with write, no write)
// deadline set.
func noDeadline(cn *conn, write bool) bool {
	if cn.tm == nil {
		return true
	}
	if write {
		return cn.tm.wrDeadline == 0
	}
	return cn.tm.rdDeadline == 0
}
