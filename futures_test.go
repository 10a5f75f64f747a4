package ringline

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// onWorkerTask runs f as a task on worker 0 of rt and waits for it to
// return (or fails after d).
func onWorkerTask(t *testing.T, rt *Runtime, d time.Duration, f func(tc TaskCtx)) {
	t.Helper()
	done := make(chan struct{})
	require.NoError(t, rt.Post(0, func(tc TaskCtx) {
		defer close(done)
		f(tc)
	}))
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("task did not finish within %v", d)
	}
}

// Timers fire in deadline order, never early; Sleep and SleepUntil wait at
// least their duration. The sleeps are 1 ms apart, so a timer fired even a
// little before its time would show.
func TestTimersOrderNotEarly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		type fired struct {
			want, slept time.Duration
			due         time.Time // when the sleep was due: the firing order
		}
		var got []fired
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			var hs []JoinHandle
			for _, i := range rand.New(rand.NewPCG(3, 4)).Perm(20) {
				d := time.Duration(10+i) * time.Millisecond
				h, err := tc.Spawn(func(tc TaskCtx) {
					start := time.Now()
					due := start.Add(d)
					var err error
					if (d/time.Millisecond)%2 == 0 {
						err = tc.Sleep(d)
					} else {
						err = tc.SleepUntil(due) // the worker's deadline is exactly due
					}
					if err != nil {
						panic(err)
					}
					got = append(got, fired{d, time.Since(start), due})
				})
				require.NoError(t, err)
				hs = append(hs, h)
			}
			for _, h := range hs {
				require.NoError(t, h.Join())
			}
			before := time.Now()
			require.NoError(t, tc.SleepUntil(before.Add(15*time.Millisecond)))
			assert.GreaterOrEqual(t, time.Since(before), 15*time.Millisecond)
		})
		require.Len(t, got, 20)
		for k, f := range got {
			assert.GreaterOrEqual(t, f.slept, f.want, "a %v sleep fired early", f.want)
			// Timers fire in the order they are due. (The sleeps start a
			// few µs apart, more under load, so that is the order of
			// start+d, not of d; a Sleep's deadline is read a moment
			// after start, hence the small tolerance.)
			if k > 0 && f.due.Before(got[k-1].due.Add(-100*time.Microsecond)) {
				t.Errorf("a sleep due at +%v fired after one due at +%v", f.due.Sub(got[0].due), got[k-1].due.Sub(got[0].due))
			}
		}
	})
}

// 100,000 concurrent timers (Timer futures from one task, awaited through
// JoinAll) all fire, in order, with nothing left armed.
func TestManyTimers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		const n = 100_000
		onWorkerTask(t, rt, 60*time.Second, func(tc TaskCtx) {
			w := tc.w
			timers := make([]Timer, n)
			fs := make([]Future, n)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range timers {
				timers[i] = tc.After(time.Duration(rng.IntN(200)) * time.Millisecond)
				fs[i] = timers[i]
			}
			require.Equal(t, n, len(w.timers))
			require.NoError(t, JoinAll(fs...))
			for _, tm := range timers {
				require.NoError(t, tm.Await())
			}
			require.Zero(t, len(w.timers), "every timer left the heap")
			assert.GreaterOrEqual(t, len(w.timerPool), n, "nodes went back to the pool")
			// A second round reuses them: no allocation per timer.
			allocs := testing.AllocsPerRun(10, func() {
				tm := tc.After(time.Hour)
				tm.Stop()
			})
			assert.Zero(t, allocs, "After+Stop allocates")
		})
	})
}

// A timer stopped before it fires wakes its waiter with ErrTimerStopped and
// never fires; Stop after it fired reports false.
func TestTimerStopBeforeAndAfter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			long := tc.After(time.Hour)
			h, _ := tc.Spawn(func(tc TaskCtx) {
				if err := long.Await(); !errors.Is(err, ErrTimerStopped) {
					panic(fmt.Sprintf("Await after Stop: %v", err))
				}
			})
			require.NoError(t, tc.Sleep(time.Millisecond)) // the spawned task waits now
			require.True(t, long.Stop())
			require.NoError(t, h.Join())
			require.False(t, long.Stop(), "stopping twice")
			require.ErrorIs(t, long.Await(), ErrTimerStopped)

			short := tc.After(5 * time.Millisecond)
			require.NoError(t, short.Await())
			require.False(t, short.Stop(), "a fired timer cannot be stopped")
			require.NoError(t, short.Await(), "awaiting a fired timer again")
			require.Zero(t, len(tc.w.timers))
		})
	})
}

// Sleep (any suspension) inside a parse closure is refused: the connection
// closes, the others are fine.
func TestSleepInsideParseClosureRefused(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				if b[0] == 's' {
					_ = c.Task().Sleep(time.Millisecond)
				}
				c.SendNowait(b)
				return Consumed(len(b))
			})
			echoTask(c)
		})
		bad := dial(t, rt)
		_, err := bad.Write([]byte("s"))
		require.NoError(t, err)
		_, err = io.ReadAll(bad)
		require.NoError(t, err)
		good := dial(t, rt)
		require.Equal(t, []byte("ok"), roundTrip(t, good, []byte("ok")))
		assert.Equal(t, uint64(1), Total(rt.Stats()).TaskPanics)
	})
}

// An idle connection's read deadline ends a waiting WithData with Err
// satisfying os.ErrDeadlineExceeded; the connection stays usable, and a
// renewed deadline re-arms (the idle-timeout pattern).
func TestReadDeadlineIdle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type res struct {
			n       int
			err     error
			elapsed time.Duration
		}
		out := make(chan res, 8)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			for i := 0; i < 3; i++ {
				start := time.Now()
				require.NoError(t, c.SetReadDeadline(start.Add(100*time.Millisecond)))
				n := c.WithData(func(b []byte) ParseResult {
					c.SendNowait(b)
					return Consumed(len(b))
				})
				out <- res{n, c.Err(), time.Since(start)}
			}
		})
		cl := dial(t, rt)
		r := <-out
		assert.Zero(t, r.n)
		assert.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
		assert.GreaterOrEqual(t, r.elapsed, 100*time.Millisecond, "not early")
		// Still usable: data read after the timeout, Err clear again.
		_, err := cl.Write([]byte("hi"))
		require.NoError(t, err)
		r = <-out
		assert.Equal(t, 2, r.n)
		assert.NoError(t, r.err)
		got, err := readWithin(cl, 2, 5*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "hi", string(got))
		r = <-out // the third wait times out again
		assert.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
	})
}

// A deadline moved later while a receive waits (renewed) does not end the
// wait at the old time, and still ends it at the new one; one moved
// earlier ends it at once; the zero time removes it.
func TestReadDeadlineResetWhileWaiting(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan time.Duration, 2)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			start := time.Now()
			require.NoError(t, c.SetReadDeadline(start.Add(50*time.Millisecond)))
			// A helper task of the worker pushes the deadline out once
			// while this one waits.
			_, _ = c.Task().Spawn(func(tc TaskCtx) {
				_ = tc.Sleep(20 * time.Millisecond)
				_ = c.SetReadDeadline(start.Add(150 * time.Millisecond))
			})
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			out <- time.Since(start)
			// Earlier than now: the next wait ends at once.
			require.NoError(t, c.SetReadDeadline(time.Now().Add(-time.Second)))
			start = time.Now()
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			out <- time.Since(start)
			require.NoError(t, c.SetReadDeadline(time.Time{}))
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		_ = dial(t, rt)
		var first, second time.Duration
		for i, d := range []*time.Duration{&first, &second} {
			select {
			case *d = <-out:
			case <-time.After(5 * time.Second):
				t.Fatalf("wait %d never ended", i)
			}
		}
		assert.GreaterOrEqual(t, first, 150*time.Millisecond, "the renewed deadline held")
		assert.Less(t, second, 50*time.Millisecond, "a past deadline ends the wait at once")
	})
}

// A write deadline bounds SendFuture.Await on a peer that never reads: it
// returns os.ErrDeadlineExceeded, the bytes stay queued, and they are
// delivered once the peer reads.
func TestWriteDeadlineNonReadingPeer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.MaxSendQueue = cfg.SendPoolSlots * cfg.SendSlotSize
		const total = 1 << 20
		type res struct {
			err     error
			elapsed time.Duration
			late    error
		}
		out := make(chan res, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			setSmallSndbuf(c)
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			f, err := c.Send(pattern(total, 7))
			require.NoError(t, err)
			start := time.Now()
			require.NoError(t, c.SetWriteDeadline(start.Add(100*time.Millisecond)))
			_, err = f.Await()
			r := res{err: err, elapsed: time.Since(start)}
			require.NoError(t, c.SetWriteDeadline(time.Time{}))
			_, r.late = f.Await()
			out <- r
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		time.Sleep(300 * time.Millisecond) // not reading: the deadline passes
		got := make([]byte, total)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		assert.Equal(t, pattern(total, 7), got, "every queued byte arrives after the deadline")
		r := <-out
		assert.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
		assert.GreaterOrEqual(t, r.elapsed, 100*time.Millisecond)
		assert.NoError(t, r.late, "the send completed once the peer read")
	})
}

// Spawn + Join; a panic in a spawned task reaches Join as *PanicError and
// the worker lives; Abort stops a sleeping task, whose defers run.
func TestSpawnJoinPanicAbort(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			sum := 0
			h, err := tc.Spawn(func(tc TaskCtx) {
				_ = tc.Sleep(time.Millisecond)
				sum = 42
			})
			require.NoError(t, err)
			require.NoError(t, h.Join())
			assert.Equal(t, 42, sum)
			assert.True(t, h.Done())

			ph, _ := tc.Spawn(func(tc TaskCtx) { panic("spawned bug") })
			var pe *PanicError
			require.ErrorAs(t, ph.Join(), &pe)
			assert.Equal(t, "spawned bug", pe.Value)
			assert.NotEmpty(t, pe.Stack)

			deferred := false
			sleeper, _ := tc.Spawn(func(tc TaskCtx) {
				defer func() { deferred = true }()
				_ = tc.Sleep(time.Hour)
			})
			_ = tc.Sleep(time.Millisecond)
			require.NoError(t, sleeper.Abort())
			require.ErrorIs(t, sleeper.Join(), ErrAborted)
			assert.True(t, deferred, "an aborted task's defers run")
			assert.Zero(t, len(tc.w.timers), "its sleep timer is gone")

			gh, _ := tc.Spawn(func(tc TaskCtx) { runtime.Goexit() })
			require.ErrorIs(t, gh.Join(), ErrGoexit)
		})
		// The worker lives.
		onWorkerTask(t, rt, 5*time.Second, func(tc TaskCtx) {})
		assert.True(t, settle(2*time.Second, func() bool {
			st := Total(rt.Stats())
			return st.TaskPanics == 1 && st.TaskGoexits == 1
		}), "TaskPanics and TaskGoexits: %+v", Total(rt.Stats()))
		onWorkerTask(t, rt, 5*time.Second, func(tc TaskCtx) {})
	})
}

// Select of a timer against WithData: the first to resolve wins, the other
// stays valid; a task waiting in Select is woken only by its futures.
func TestSelectTimerAgainstData(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan []int, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			tc := c.Task()
			var wins []int
			// Nothing arrives for 50 ms: the timer wins.
			tm := tc.After(50 * time.Millisecond)
			i, err := Select(c.Readable(), tm)
			require.NoError(t, err)
			wins = append(wins, i)
			// Data arrives before a long timer: data wins; the timer
			// stays valid and is stopped.
			tm = tc.After(time.Hour)
			i, err = Select(c.Readable(), tm)
			require.NoError(t, err)
			wins = append(wins, i)
			require.True(t, tm.Stop())
			n := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			wins = append(wins, n)
			out <- wins
		})
		cl := dial(t, rt)
		time.Sleep(150 * time.Millisecond)
		_, err := cl.Write([]byte("data"))
		require.NoError(t, err)
		select {
		case wins := <-out:
			assert.Equal(t, []int{1, 0, 4}, wins)
		case <-time.After(5 * time.Second):
			t.Fatal("select never returned")
		}
	})
}

// Post from 100 goroutines at once: every function runs as a task, each
// goroutine's in its order, none lost (under -race in make test).
func TestRuntimePostConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 2
		rt := launchIdle(t, cfg)
		const goroutines, per = 100, 100
		var mu sync.Mutex // guards seen: written by both workers
		seen := make([][]int, goroutines)
		var wg sync.WaitGroup
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < per; i++ {
					require.NoError(t, rt.Post(g%2, func(tc TaskCtx) {
						mu.Lock()
						seen[g] = append(seen[g], i)
						mu.Unlock()
					}))
				}
			}()
		}
		wg.Wait()
		require.True(t, settle(10*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, s := range seen {
				if len(s) < per {
					return false
				}
			}
			return true
		}), "posts were lost")
		mu.Lock()
		defer mu.Unlock()
		for g, s := range seen {
			for i, v := range s {
				require.Equal(t, i, v, "goroutine %d's posts out of order", g)
			}
		}
	})
}

// A mailbox fed by many goroutines delivers every value once, in each
// producer's order, to a task; Put never blocks (full reports
// ErrMailboxFull); Close ends the receiver.
func TestMailbox(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		mb, err := NewMailbox[[2]int](rt, 0, 64)
		require.NoError(t, err)
		const producers, per = 8, 2000
		got := make(chan [][]int, 1)
		require.NoError(t, rt.Post(0, func(tc TaskCtx) {
			seq := make([][]int, producers)
			for {
				v, err := mb.Recv()
				if errors.Is(err, ErrClosed) {
					break
				}
				if err != nil {
					panic(err)
				}
				seq[v[0]] = append(seq[v[0]], v[1])
			}
			got <- seq
		}))
		var full int64
		var fullMu sync.Mutex
		var wg sync.WaitGroup
		for p := 0; p < producers; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				deadline := time.Now().Add(10 * time.Second)
				for i := 0; i < per; {
					if time.Now().After(deadline) {
						t.Errorf("producer %d: the receiver never drained the mailbox", p)
						return
					}
					switch err := mb.Put([2]int{p, i}); {
					case err == nil:
						i++
					case errors.Is(err, ErrMailboxFull):
						fullMu.Lock()
						full++
						fullMu.Unlock()
						runtime.Gosched()
					default:
						t.Errorf("put: %v", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		mb.Close()
		require.ErrorIs(t, mb.Put([2]int{}), ErrClosed)
		var seq [][]int
		select {
		case seq = <-got:
		case <-time.After(10 * time.Second):
			t.Fatal("receiver did not finish")
		}
		for p := range seq {
			require.Len(t, seq[p], per, "producer %d", p)
			for i, v := range seq[p] {
				require.Equal(t, i, v)
			}
		}
		t.Logf("Put found the mailbox full %d times", full)
	})
}

// Runtime.Send reaches a connection by token from an ordinary goroutine,
// refuses a stale token, and refuses from a task (it would block a worker).
func TestRuntimeSendByToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		toks := make(chan ConnToken, 2)
		fromTask := make(chan error, 1)
		var rtp *Runtime
		var rtMu sync.Mutex
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			toks <- c.Token()
			rtMu.Lock()
			r := rtp
			rtMu.Unlock()
			fromTask <- r.Send(c.Token(), []byte("x"))
			for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
			}
		})
		rtMu.Lock()
		rtp = rt
		rtMu.Unlock()
		cl := dial(t, rt)
		tok := <-toks
		require.ErrorIs(t, <-fromTask, ErrWouldBlock)
		require.NoError(t, rt.Send(tok, []byte("pushed")))
		got, err := readWithin(cl, 6, 5*time.Second)
		require.NoError(t, err)
		assert.Equal(t, "pushed", string(got))
		cl.Close()
		require.True(t, settle(5*time.Second, func() bool { return rt.Send(tok, []byte("late")) != nil }))
		err = rt.Send(tok, []byte("late"))
		assert.True(t, errors.Is(err, ErrStale) || errors.Is(err, ErrClosed), "got %v", err)
		bad := tok
		bad.Worker = 7
		assert.ErrorIs(t, rt.Send(bad, nil), ErrNoWorker)
	})
}

// Off the worker, TaskCtx methods and futures refuse (ErrNotInWorker); on
// the worker outside a task, the waiting ones say ErrNotInTask.
func TestTaskCtxOffWorker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		tcs := make(chan TaskCtx, 1)
		require.NoError(t, rt.Post(0, func(tc TaskCtx) { tcs <- tc }))
		tc := <-tcs
		require.ErrorIs(t, tc.Sleep(time.Millisecond), ErrNotInWorker)
		_, err := tc.Spawn(func(TaskCtx) {})
		require.ErrorIs(t, err, ErrNotInWorker)
		require.ErrorIs(t, tc.After(time.Second).Await(), ErrNotInWorker)
		errs := make(chan error, 1)
		require.NoError(t, rt.workers[0].post(func() { errs <- tc.Sleep(time.Millisecond) }))
		require.ErrorIs(t, <-errs, ErrNotInTask)
	})
}

// Shutdown with timers armed, spawned tasks sleeping, posts and mailbox
// receivers pending leaves no goroutine and no fd; afterwards every way in
// returns ErrClosed at once.
func TestShutdownWithPendingWork(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		fds0 := openFDs(t)
		g0 := runtime.NumGoroutine()
		cfg := testConfig(be)
		cfg.Workers = 2
		rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		mb, err := NewMailbox[int](rt, 1, 4)
		require.NoError(t, err)
		started := make(chan struct{}, 4)
		for w := 0; w < 2; w++ {
			require.NoError(t, rt.Post(w, func(tc TaskCtx) {
				for i := 0; i < 50; i++ {
					_, _ = tc.Spawn(func(tc TaskCtx) { _ = tc.Sleep(time.Hour) })
					_ = tc.After(time.Hour)
				}
				started <- struct{}{}
				_ = tc.Sleep(time.Hour)
			}))
		}
		require.NoError(t, rt.Post(1, func(tc TaskCtx) {
			started <- struct{}{}
			_, _ = mb.Recv()
		}))
		for i := 0; i < 3; i++ {
			<-started
		}
		for i := 0; i < 100; i++ {
			_ = rt.Post(i%2, func(tc TaskCtx) { _ = tc.Sleep(time.Hour) })
		}
		c := dial(t, rt)
		_ = c
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown hung")
		}
		start := time.Now()
		assert.ErrorIs(t, rt.Post(0, func(TaskCtx) {}), ErrClosed)
		assert.ErrorIs(t, mb.Put(1), ErrClosed)
		assert.ErrorIs(t, rt.Send(ConnToken{}, []byte("x")), ErrClosed)
		assert.Less(t, time.Since(start), time.Second, "never blocks")
		c.Close()
		assert.True(t, settle(5*time.Second, func() bool { return openFDs(t) <= fds0 }), "fds: %d before, %d after", fds0, openFDs(t))
		assert.True(t, settle(5*time.Second, func() bool { return runtime.NumGoroutine() <= g0 }),
			"goroutines: %d before, %d after", g0, runtime.NumGoroutine())
	})
}
