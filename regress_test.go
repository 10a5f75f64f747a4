package ringline

import (
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/gid"
	"github.com/ringline-go/ringline/internal/require"
)

// Found in review (R1): One Sleep(math.MaxInt64) (or After) overflows now+d; nextTimeout's
// subtraction overflows again, the loop waits "292 years", and every timer
// of the worker (sleeps, deadlines, drain timeouts, the accept pause) stops.
func TestRegressHugeSleepFreezesWorkerTimers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		woke := make(chan struct{}, 1)
		require.NoError(t, rt.Post(0, func(tc TaskCtx) { _ = tc.Sleep(math.MaxInt64) }))
		require.NoError(t, rt.Post(0, func(tc TaskCtx) {
			_ = tc.Sleep(20 * time.Millisecond)
			woke <- struct{}{}
		}))
		select {
		case <-woke:
		case <-time.After(3 * time.Second):
			t.Fatal("a 20 ms Sleep did not wake within 3 s: another task's Sleep(math.MaxInt64) froze the worker's timers")
		}
	})
}

// Found in review (R1b): SleepUntil(time.Time{}) (an unset deadline: "already past")
// saturates clockAt to MinInt64, with the same result.
func TestRegressSleepUntilZeroTimeFreezesTimers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		woke := make(chan struct{}, 1)
		require.NoError(t, rt.Post(0, func(tc TaskCtx) {
			_ = tc.SleepUntil(time.Time{})
			_ = tc.Sleep(20 * time.Millisecond)
			woke <- struct{}{}
		}))
		select {
		case <-woke:
		case <-time.After(3 * time.Second):
			t.Fatal("SleepUntil(time.Time{}) froze the worker's timers")
		}
	})
}

// Found in review (R2): A mailbox's waiter list keeps every task that ever selected on
// Ready() while no value came: it grows without bound (about 460 B per
// ended task, and every poll scans it).
func TestRegressMailboxWaitersBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		mb, err := NewMailbox[int](rt, 0, 4)
		require.NoError(t, err)
		n := 0
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			var hs []JoinHandle
			for i := 0; i < 1000; i++ {
				h, _ := tc.Spawn(func(tc TaskCtx) { _, _ = Select(mb.Ready(), tc.After(time.Millisecond)) })
				hs = append(hs, h)
			}
			for _, h := range hs {
				_ = h.Join()
			}
			n = len(mb.waiters)
		})
		assert.Less(t, n, 10, "ended tasks still registered as mailbox waiters")
	})
}

// Found in review (R2b): The same for a long-lived task's joiners.
func TestRegressJoinersBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		n := 0
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			bg, _ := tc.Spawn(func(tc TaskCtx) { _ = tc.Sleep(time.Hour) })
			var hs []JoinHandle
			for i := 0; i < 1000; i++ {
				h, _ := tc.Spawn(func(tc TaskCtx) { _, _ = Select(bg, tc.After(time.Millisecond)) })
				hs = append(hs, h)
			}
			for _, h := range hs {
				_ = h.Join()
			}
			n = len(bg.t.join.joiners)
			_ = bg.Abort()
		})
		assert.Less(t, n, 10, "ended tasks still registered as joiners")
	})
}

// Found in review (R3): Abort of a suspended task that was woken in the same loop turn (it
// sits later in the run queue) lets it run user code once more after
// Abort returned.
func TestRegressAbortedTaskDoesNotRunAgain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		ranAfterAbort := false
		onWorkerTask(t, rt, 5*time.Second, func(tc TaskCtx) {
			at := time.Now().Add(20 * time.Millisecond)
			aborted := false
			b, err := tc.Spawn(func(tc TaskCtx) {
				_ = tc.SleepUntil(at.Add(time.Nanosecond)) // due in the same turn as a's, after it
				if aborted {
					ranAfterAbort = true
				}
				_ = tc.Sleep(time.Hour)
			})
			require.NoError(t, err)
			a, err := tc.Spawn(func(tc TaskCtx) {
				_ = tc.SleepUntil(at)
				require.NoError(t, b.Abort())
				aborted = true
			})
			require.NoError(t, err)
			_ = a.Join()
			assert.ErrorIs(t, b.Join(), ErrAborted)
		})
		assert.False(t, ranAfterAbort, "the aborted task ran its code after Abort returned")
	})
}

// Found in review (R4): Abort before the task's first run: it never ran, Join says nil.
func TestRegressAbortBeforeFirstRunJoinsAborted(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		ran := false
		var joinErr error
		onWorkerTask(t, rt, 5*time.Second, func(tc TaskCtx) {
			h, err := tc.Spawn(func(TaskCtx) { ran = true })
			require.NoError(t, err)
			require.NoError(t, h.Abort())
			joinErr = h.Join()
		})
		assert.False(t, ran)
		assert.ErrorIs(t, joinErr, ErrAborted, "Join of a task aborted before it ran")
	})
}

// Found in review (R5): ShutdownTimeout is documented to bound how long tasks may take to
// return at shutdown; beginStop gives a connection task one resume and
// kills it at its next suspension, and kills spawned tasks outright.
func TestRegressShutdownTimeoutLetsTasksReturn(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.ShutdownTimeout = 2 * time.Second
		var cleaned, spawnedDone atomic.Bool
		accepted := make(chan struct{}, 1)
		rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
			return handlerFunc(func(c ConnCtx) {
				tc := c.Task()
				_, _ = tc.Spawn(func(tc TaskCtx) { _ = tc.Sleep(10 * time.Millisecond); spawnedDone.Store(true) })
				accepted <- struct{}{}
				c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) // 0 at shutdown
				_ = tc.Sleep(10 * time.Millisecond)                                // wind down
				cleaned.Store(true)
			})
		})
		require.NoError(t, err)
		dial(t, rt)
		<-accepted
		rt.Shutdown()
		<-rt.Done()
		assert.True(t, cleaned.Load(), "a connection task that needed 10 ms to return was killed (ShutdownTimeout 2s)")
		assert.True(t, spawnedDone.Load(), "a spawned task that needed 10 ms was killed (ShutdownTimeout 2s)")
	})
}

// Found in review (R6): After Shutdown() returned, Post reports success and drops f, and
// Runtime.Send blocks as long as the worker is busy (for ever if a task
// never yields); the docs promise ErrClosed without blocking.
func TestRegressBridgeAfterShutdownWithBusyWorker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.StallThreshold = -1
		rt := launchIdle(t, cfg)
		busy := make(chan struct{})
		require.NoError(t, rt.Post(0, func(TaskCtx) { close(busy); time.Sleep(time.Second) }))
		<-busy
		rt.Shutdown()
		ran := make(chan struct{}, 1)
		postErr := rt.Post(0, func(TaskCtx) { ran <- struct{}{} })
		start := time.Now()
		sendErr := rt.Send(ConnToken{}, []byte("x"))
		blocked := time.Since(start)
		<-rt.Done()
		select {
		case <-ran:
		default:
			assert.ErrorIs(t, postErr, ErrClosed, "Post after Shutdown(): nil, and f never ran")
		}
		assert.ErrorIs(t, sendErr, ErrClosed)
		assert.Less(t, blocked, 100*time.Millisecond, "Runtime.Send after Shutdown() blocked")
	})
}

// Found in review (R7): MaxSendQueue did not bound one send made while
// nothing was queued: a connection whose peer did not read could pin
// nearly the whole pool with a single SendNowait. Now a send larger than
// MaxSendQueue is refused whole, and one that fits is the most a
// connection holds.
func TestRegressOneSendTakesWholePool(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be) // pool 512 x 4 KiB = 2 MiB
		cfg.MaxSendQueue = 512 << 10
		big := make([]byte, 2<<20)
		errs := make(chan error, 4)
		rt := serve(t, cfg, func(c ConnCtx) {
			_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096) // a slow peer
			errs <- c.SendNowait(big)
			errs <- c.SendNowait(big[:cfg.MaxSendQueue])
			c.WithData(func(b []byte) ParseResult { return NeedMore() })
		})
		dial(t, rt)
		require.ErrorIs(t, <-errs, ErrSendQueueFull, "a send larger than MaxSendQueue")
		require.NoError(t, <-errs, "a send of exactly MaxSendQueue")
		time.Sleep(100 * time.Millisecond)
		inUse := Total(rt.Stats()).SendSlotsInUse
		assert.LessOrEqual(t, inUse, uint64(128), "one connection holds %d slots, MaxSendQueue is 128", inUse)
	})
}

// Found in review (R8): The watchdog is blind to the worker's first loop iteration
// (busySince is 0 until the first enter returns): a blocking OnStart is
// never reported.
type blockingStarter struct{}

func (blockingStarter) OnAccept(ConnCtx) {}
func (blockingStarter) OnStart(TaskCtx)  { time.Sleep(600 * time.Millisecond) }

func TestRegressWatchdogSeesStartTaskStall(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.StallThreshold = 100 * time.Millisecond
		rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return blockingStarter{} })
		require.NoError(t, err)
		defer func() { rt.Shutdown(); rt.Wait() }()
		time.Sleep(900 * time.Millisecond)
		assert.NotZero(t, Total(rt.Stats()).Stalls, "a 600 ms blocking OnStart was not reported")
	})
}

// Found in review (R9): A handler factory that calls runtime.Goexit (require.* in a test's
// factory) leaves Launch blocked for ever; the worker's ring, pool and
// listener leak.
func TestRegressFactoryGoexitLaunchReturns(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		done := make(chan error, 1)
		go func() {
			_, err := New(testConfig(be)).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
				runtime.Goexit()
				return nil
			})
			done <- err
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			t.Fatal("Launch never returned after the factory called runtime.Goexit")
		}
	})
}

// Found in review (R10): Select with no non-nil future dereferences a nil task (in a task:
// a PanicError; on an ordinary goroutine: the process dies).
func TestRegressSelectNoFutures(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		var joinErr error
		onWorkerTask(t, rt, 5*time.Second, func(tc TaskCtx) {
			h, _ := tc.Spawn(func(TaskCtx) { _, _ = Select(nil) })
			joinErr = h.Join()
		})
		assert.NoError(t, joinErr, "Select(nil): nil futures are documented as ignored")
	})
}

// Found in review (R11): Once a worker's goroutine has exited, its g is reused by new
// goroutines, which then pass onWorker (the check is no longer exact).
func TestRegressWorkerGReusedAfterExit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt, err := New(testConfig(be)).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		w := rt.workers[0]
		rt.Shutdown()
		rt.Wait()
		var admitted atomic.Int32
		for round := 0; round < 200 && admitted.Load() == 0; round++ {
			var wg sync.WaitGroup
			for i := 0; i < 64; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if gid.Get() == w.g && w.onWorker() {
						admitted.Add(1)
					}
				}()
			}
			wg.Wait()
		}
		assert.Zero(t, admitted.Load(), "a foreign goroutine passed onWorker after the worker exited")
	})
}

// Found in review (R10): a worker scheduled late, after the watchdog had
// already found every worker waiting and gone to sleep, started its first
// iteration without waking it, so a blocking OnStart went unreported.
func TestRegressWatchdogWokenByLateStartTask(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 1
		cfg.StallThreshold = 100 * time.Millisecond
		var launched atomic.Pointer[Runtime]
		asleep := make(chan struct{})
		var slept atomic.Bool
		testHookWorkerRun = func(int) {
			// Hold the worker back until the watchdog sleeps.
			slept.Store(settle(2*time.Second, func() bool { rt := launched.Load(); return rt != nil && rt.wd.asleep.Load() }))
			close(asleep)
		}
		defer func() { testHookWorkerRun = nil }()
		rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return blockingStarter{} })
		require.NoError(t, err)
		launched.Store(rt)
		defer func() { rt.Shutdown(); rt.Wait() }()
		<-asleep
		require.True(t, slept.Load(), "the watchdog did not sleep before the worker started")
		require.True(t, settle(2*time.Second, func() bool { return Total(rt.Stats()).Stalls > 0 }),
			"a 600 ms blocking OnStart after the watchdog slept was not reported")
	})
}

// Found in review (R11): woken, the watchdog waited a whole period before
// its first look, so an iteration that began at an idle spell's end was
// reported a period late (at 1.25 StallThreshold). It now looks at once.
func TestRegressWatchdogLooksWhenWoken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.StallThreshold = 2 * time.Second // a look every 500 ms
		hold := make(chan struct{})
		var release sync.Once
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			<-hold // busy, well under the threshold
			echoTask(c)
		})
		// Registered after serve's, so it runs first: a failed require
		// below must not leave the task blocked and the worker unstoppable.
		t.Cleanup(func() { release.Do(func() { close(hold) }) })
		cl := dial(t, rt)
		require.True(t, settle(3*time.Second, rt.wd.asleep.Load), "the watchdog did not sleep")
		n := rt.wd.looks.Load()
		_, err := cl.Write([]byte("s"))
		require.NoError(t, err)
		looked := settle(250*time.Millisecond, func() bool { return rt.wd.looks.Load() > n })
		release.Do(func() { close(hold) })
		require.True(t, looked, "no look within half a period of the wake")
		require.Equal(t, []byte("after"), roundTrip(t, cl, []byte("after")))
		assert.Zero(t, Total(rt.Stats()).Stalls)
	})
}
