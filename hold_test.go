package ringline

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// holdConfig is testConfig with held waits of hold, for a worker that
// holds: io_uring, or epoll locked to its thread (PinCPUs: an unlocked
// epoll worker parks instead).
func holdConfig(be Backend, hold time.Duration) Config {
	cfg := testConfig(be)
	cfg.HoldWait = hold
	cfg.PinCPUs = be == Epoll
	return cfg
}

// alwaysLong makes every blocking wait after the first of the workers
// launched during the test count as long (waitMode), so that they hold.
func alwaysLong(t *testing.T) { parkSettings(t, -1, [2]int{1, 1 << 30}) }

// A held wait (Config.HoldWait) ends at once for everything that ends an
// ordinary one: bytes from a peer, a task's timer, a goroutine's Post and
// the shutdown. With a one-second hold, anything that waited for the hold
// to run out would take a second per round; the bounds below are a tenth
// of that, or less, for the whole lot.
func TestHoldWaitEndsForEveryEvent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		alwaysLong(t)
		rt := serve(t, holdConfig(be, time.Second), echoTask)
		c := dial(t, rt)
		roundTrip(t, c, []byte("warm"))

		start := time.Now()
		for i := 0; i < 50; i++ {
			msg := pattern(100+i*37, byte(i))
			require.Equal(t, msg, roundTrip(t, c, msg), "round %d", i)
		}
		assert.Less(t, time.Since(start), 5*time.Second, "50 round trips, each a held wait woken by the peer's bytes")

		start = time.Now()
		require.NoError(t, inTask(t, rt, 0, func(tc TaskCtx) error { return tc.Sleep(20 * time.Millisecond) }))
		took := time.Since(start)
		assert.GreaterOrEqual(t, took, 20*time.Millisecond)
		assert.Less(t, took, 500*time.Millisecond, "a timer ends a held wait")

		for i := 0; i < 10; i++ {
			time.Sleep(5 * time.Millisecond) // the worker is back in a held wait
			start = time.Now()
			require.NoError(t, inTask(t, rt, 0, func(TaskCtx) error { return nil }))
			assert.Less(t, time.Since(start), 500*time.Millisecond, "a Post ends a held wait")
		}

		onWorker(t, rt, 0, func(w *worker) { w.publish() })
		st := Total(rt.Stats())
		assert.Greater(t, st.HeldWaits, uint64(25), "the worker held its waits")
		assert.Less(t, st.HoldTimeouts, st.HeldWaits/4, "a second's hold seldom ran out")

		time.Sleep(5 * time.Millisecond)
		start = time.Now()
		stop(t, rt)
		assert.Less(t, time.Since(start), 900*time.Millisecond, "the shutdown ends a held wait")
	})
}

// Holding is on by default and off with a negative HoldWait; a hold that
// runs out with nothing to do goes on to an ordinary wait (HoldTimeouts),
// after which the worker still serves. Gaps of 2 ms between round trips
// are long waits, so the worker holds without any test setting.
func TestHoldWaitDefaultAndOff(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, tc := range []struct {
			name string
			hold time.Duration
		}{{"default", 0}, {"off", -1}, {"short", 100 * time.Microsecond}} {
			rt := serve(t, holdConfig(be, tc.hold), echoTask)
			c := dial(t, rt)
			for i := 0; i < 10; i++ {
				roundTrip(t, c, pattern(64, byte(i)))
				time.Sleep(2 * time.Millisecond) // idle: holds run out
			}
			stop(t, rt)
			st := Total(rt.Stats())
			if tc.hold < 0 {
				assert.Zero(t, st.HeldWaits, "%s: no held waits", tc.name)
				assert.Zero(t, st.HoldTimeouts, "%s", tc.name)
				continue
			}
			assert.GreaterOrEqual(t, st.HeldWaits, uint64(5), "%s: held waits", tc.name)
			if tc.hold > 0 {
				assert.GreaterOrEqual(t, st.HoldTimeouts, uint64(5), "%s: 2ms idle gaps outlast the hold", tc.name)
			}
			assert.LessOrEqual(t, st.HoldTimeouts, st.HeldWaits, "%s", tc.name)
			assert.GreaterOrEqual(t, st.RingEnters, st.HeldWaits, "%s: held waits count as enters", tc.name)
		}
	})
}

// With GOMAXPROCS=1 another goroutine shares the only P with a worker
// that holds it while waiting: once a hold runs out the worker waits the
// ordinary way and the goroutine runs, and meanwhile the worker serves.
// A hold that never let go would starve the goroutine until sysmon
// preempted the worker; here it would take a thousand holds of 20 ms.
func TestHoldWaitSharesTheP(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		alwaysLong(t)
		prev := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(prev)
		rt := serve(t, holdConfig(be, 20*time.Millisecond), echoTask)
		c := dial(t, rt)
		var turns atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			for turns.Load() < 1000 {
				turns.Add(1)
				runtime.Gosched()
			}
		}()
		for i := 0; i < 20; i++ {
			roundTrip(t, c, pattern(64, byte(i)))
		}
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the goroutine made %d of 1000 turns in 10s", turns.Load())
		}
	})
}
