package ringline

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/require"
)

// launchIdle starts a runtime with no listener (workers with nothing to do
// block in the kernel) and stops it when the test ends.
func launchIdle(t *testing.T, cfg Config) *Runtime {
	t.Helper()
	rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.NoError(t, err)
	t.Cleanup(func() {
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("runtime did not stop within 10s")
		}
	})
	return rt
}

// Many goroutines hand the worker functions at once, while it sleeps in the
// kernel between bursts: every post runs, each goroutine's in its order,
// and none waits for an unrelated event (a lost wake-up would strand a
// post until the 5 s deadline).
func TestPostWakeStress(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		w := rt.workers[0]
		const goroutines, perG, rounds = 50, 10, 300
		for round := 0; round < rounds; round++ {
			last := make([]int, goroutines) // written only on the worker
			var ran int
			done := make(chan struct{})
			var wg sync.WaitGroup
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 1; i <= perG; i++ {
						err := w.post(func() {
							if last[g] != i-1 {
								t.Errorf("goroutine %d: post %d ran after %d", g, i, last[g])
							}
							last[g] = i
							if ran++; ran == goroutines*perG {
								close(done)
							}
						})
						if err != nil {
							t.Errorf("post: %v", err)
							return
						}
					}
				}()
			}
			wg.Wait()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("round %d: posts stranded (a lost wake-up)", round)
			}
			// Let the worker go back to sleep before the next burst.
			time.Sleep(time.Millisecond)
		}
	})
}

// A burst of posts costs a handful of wake-ups, not one per post: while a
// wake is on its way, further posts only queue.
func TestPostBurstCoalescesWakes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		w := rt.workers[0]
		time.Sleep(20 * time.Millisecond)
		wakes0 := w.wakeups.Load()
		// Hold the loop (a post runs on the loop goroutine, which may
		// block in a test) while the burst is queued, as a busy worker
		// would be.
		gate := make(chan struct{})
		require.NoError(t, w.post(func() { <-gate }))
		done := make(chan struct{})
		n := 0
		for i := 0; i < 1000; i++ {
			require.NoError(t, w.post(func() {
				if n++; n == 1000 {
					close(done)
				}
			}))
		}
		close(gate)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("posts did not run")
		}
		wakes := w.wakeups.Load() - wakes0
		require.LessOrEqual(t, wakes, uint64(3), "1001 posts cost %d wake-ups", wakes)
		require.GreaterOrEqual(t, wakes, uint64(1))
	})
}

// After the worker stopped, post refuses at once and never blocks.
func TestPostAfterShutdown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := launchIdle(t, testConfig(be))
		w := rt.workers[0]
		ran := make(chan struct{}, 1)
		require.NoError(t, w.post(func() { ran <- struct{}{} }))
		rt.Shutdown()
		<-rt.Done()
		select {
		case <-ran:
		default:
			t.Fatal("a post taken before shutdown did not run")
		}
		require.ErrorIs(t, w.post(func() {}), ErrClosed)
	})
}

// Found in review: a Put whose wake-up post failed (the worker had just
// stopped) took back "its" value after unlocking, but by then another
// Put could have added one behind it (or a TryRecv taken it): the
// rollback removed someone else's value, or drove the count below zero.
// Many goroutines put while the runtime stops; afterwards the mailbox
// holds exactly the values whose Put returned nil (nothing receives).
func TestMailboxPutRacingShutdown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for round := 0; round < 20; round++ {
			rt := serve(t, testConfig(be), echoTask)
			mb, err := NewMailbox[int](rt, 0, 1<<16)
			require.NoError(t, err)
			const putters, each = 8, 2000
			var wg sync.WaitGroup
			accepted := make([][]int, putters)
			for p := 0; p < putters; p++ {
				wg.Add(1)
				go func(p int) {
					defer wg.Done()
					for i := 0; i < each; i++ {
						v := p*each + i
						if err := mb.Put(v); err == nil {
							accepted[p] = append(accepted[p], v)
						} else if !errors.Is(err, ErrClosed) {
							t.Errorf("Put: %v", err)
							return
						}
					}
				}(p)
			}
			time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
			stop(t, rt)
			wg.Wait()
			want := map[int]bool{}
			for _, a := range accepted {
				for _, v := range a {
					want[v] = true
				}
			}
			got := map[int]bool{}
			for {
				v, ok := mb.TryRecv()
				if !ok {
					break
				}
				require.False(t, got[v], "value %d twice", v)
				got[v] = true
			}
			require.Equal(t, len(want), len(got), "round %d: values held vs Puts that returned nil", round)
			for v := range want {
				require.True(t, got[v], "round %d: value %d was accepted but is gone", round, v)
			}
		}
	})
}
