package ringline

import (
	"io"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A sleeping task that is aborted and sleeps again in a deferred call (a
// graceful wind-down) leaves no timer behind: the first Sleep's node, whose
// suspension unwound, is disarmed and pooled again, not left armed in the
// heap (for an hour here) holding the dead task.
func TestSleepInDeferAfterAbortLeavesNoTimer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			w := tc.w
			sleeper, err := tc.Spawn(func(tc TaskCtx) {
				defer func() { _ = tc.Sleep(time.Millisecond) }()
				_ = tc.Sleep(time.Hour)
			})
			require.NoError(t, err)
			_ = tc.Sleep(time.Millisecond)
			require.NoError(t, sleeper.Abort())
			require.ErrorIs(t, sleeper.Join(), ErrAborted)
			n := len(w.timers)
			var stale *task
			if n > 0 {
				stale = w.timers[0].task
			}
			assert.Zero(t, n, "an aborted task's sleep timers are gone (heap still holds %d, the first one's task is the dead sleeper: %v)", n, stale == sleeper.t)
		})
	})
}

// The same with the suspension refused inside a parse closure and the panic
// recovered by the handler: the refused Sleep's timer does not stay armed.
func TestRecoveredSleepInParseLeavesNoTimer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan int, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				func() {
					defer func() { _ = recover() }()
					_ = c.Task().Sleep(time.Hour)
				}()
				return Consumed(len(b))
			})
			_ = c.Task().Sleep(time.Millisecond)
			out <- len(c.w.timers)
			c.Close()
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("x"))
		require.NoError(t, err)
		_, _ = io.ReadAll(cl)
		select {
		case n := <-out:
			assert.Zero(t, n, "timers left armed after the task's sleeps ended")
		case <-time.After(5 * time.Second):
			t.Fatal("handler did not report")
		}
	})
}

// A Sleep borrows a pooled Timer node, but is not a use of it that a Timer
// handle could name: a stopped Timer still reports ErrTimerStopped after
// 64 Sleeps have borrowed its node (the pool is LIFO, so they take it).
func TestSleepsDoNotAgeStoppedTimer(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		onWorkerTask(t, rt, 10*time.Second, func(tc TaskCtx) {
			tm := tc.After(time.Hour)
			require.True(t, tm.Stop())
			for i := 0; i < 64; i++ {
				require.NoError(t, tc.Sleep(0))
			}
			assert.ErrorIs(t, tm.Await(), ErrTimerStopped, "a stopped timer awaited after 64 Sleeps")
		})
	})
}
