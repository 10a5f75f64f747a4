package ringline

import (
	"bytes"
	"fmt"
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

// With a single P, locked worker threads blocked in the kernel must not
// starve the client goroutines or each other.
func TestGOMAXPROCS1(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		prev := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(prev)
		cfg := testConfig(be)
		cfg.Workers = 2
		rt := serve(t, cfg, echoTask)
		runClients(t, 20, func(i int) error {
			return echoCheck(rt.Addr().String(), pattern(20000, byte(i)))
		})
	})
}

// The counters move with the traffic, and on io_uring the batching shows:
// one cgo call per loop iteration (plus setup), and far fewer cgo calls and
// ring enters than operations (ops staged plus completions, counted under
// the core by a wrapper around the backend) when many connections are busy.
func TestCounters(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		ops := countOps(t)
		rt, err := New(testConfig(be)).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		// The idle worker's counters before any traffic: the cgo calls of
		// setup, whatever their number, are the baseline.
		var idle WorkerStats
		require.True(t, settle(5*time.Second, func() bool {
			a := Total(rt.Stats())
			time.Sleep(20 * time.Millisecond)
			idle = Total(rt.Stats())
			// On io_uring the first publish shows setup's calls.
			return a == idle && (be != IOUring || idle.CgoCalls > 0)
		}), "the worker never went idle")
		setupCalls := idle.CgoCalls - idle.LoopIterations
		c := dial(t, rt)
		msg := pattern(100<<10, 7)
		require.True(t, bytes.Equal(msg, roundTrip(t, c, msg)))
		c.Close()
		require.True(t, settle(5e9, func() bool { return Total(rt.Stats()).Closed == 1 }))
		st := Total(rt.Stats())
		assert.Equal(t, uint64(1), st.Accepted)
		assert.Equal(t, uint64(len(msg)), st.BytesIn)
		assert.Equal(t, uint64(len(msg)), st.BytesOut)
		assert.NotZero(t, st.LoopIterations)
		assert.NotZero(t, st.TaskResumes)
		assert.NotZero(t, st.RingEnters)

		// Bulk echoes on several connections: a multishot recv hands over
		// whatever the socket holds, buffer by buffer, in one enter, and
		// the sends of every task resumed in an iteration go in the next.
		const conns, size = 4, 1 << 20
		runClients(t, conns, func(i int) error { return echoCheck(rt.Addr().String(), pattern(size, byte(i))) })
		rt.Shutdown()
		rt.Wait()
		st = Total(rt.Stats())
		oc := ops()[0]
		require.NotNil(t, oc)
		n := oc.stagedTotal() + oc.completions
		t.Logf("%d ops staged + %d completions; %d loop iterations, %d cgo calls, %d ring enters",
			oc.stagedTotal(), oc.completions, st.LoopIterations, st.CgoCalls, st.RingEnters)
		assert.Equal(t, uint64(1+conns), st.Accepted)
		assert.Equal(t, uint64(len(msg)+conns*size), st.BytesIn)
		assert.Equal(t, uint64(len(msg)+conns*size), st.BytesOut)
		// Each recv completion carries at most one 4 KiB buffer.
		assert.GreaterOrEqual(t, oc.completions, uint64((len(msg)+conns*size)/4096))
		if be == IOUring {
			// Every loop iteration makes exactly one cgo call (two when
			// it holds its wait: the held wait is made from Go between
			// them; three when it first lets ready goroutines run), and
			// teardown two: one last enter and the ring's release.
			_, _, yields := rt.workers[0].be.holds()
			assert.LessOrEqual(t, st.CgoCalls, setupCalls+st.LoopIterations+st.HeldWaits+yields+2, "one cgo call per loop iteration and held wait (setup made %d)", setupCalls)
			// One call may enter more than once (a staging area larger
			// than the SQ goes in SQ-sized chunks; an overflowed CQ is
			// drained), but not routinely.
			assert.LessOrEqual(t, st.RingEnters, 2*st.CgoCalls, "io_uring_enter only inside the loop's calls")
			// Measured here: about 35 operations per call, idle or loaded.
			assert.Less(t, 8*st.CgoCalls, n, "far fewer cgo calls than operations")
			assert.Less(t, 8*st.RingEnters, n, "far fewer ring enters than operations")
		} else {
			assert.Zero(t, st.CgoCalls)
			assert.LessOrEqual(t, st.RingEnters, st.LoopIterations+1, "at most one epoll_wait per loop iteration")
		}
	})
}

// In steady state the backends and the core allocate nothing per message:
// the whole process, client included, allocates far less than once per
// thousand messages.
func TestNoAllocsPerMessage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		const conns, msgs, size, depth = 4, 20000, 64, 16
		pipelinedEcho(t, rt, conns, 2000, size, depth) // warm up: slabs, accumulators, pools
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		pipelinedEcho(t, rt, conns, msgs, size, depth)
		runtime.ReadMemStats(&m1)
		n := float64(conns * msgs)
		perMsg := float64(m1.Mallocs-m0.Mallocs) / n
		t.Logf("%.5f allocations per message (%d over %d messages, client included)", perMsg, m1.Mallocs-m0.Mallocs, conns*msgs)
		assert.Less(t, perMsg, 0.01)
	})
}

// PinCPUs pins worker i to the i-th allowed CPU (wrapping around): each
// worker thread's affinity, read by thread id, is exactly that one CPU, and
// the thread that serves the worker's connections is that thread. Without
// PinCPUs the worker threads keep the whole allowed set (and an epoll
// worker, not locked then, may move between threads).
func TestPinCPUs(t *testing.T) {
	var allowed unix.CPUSet
	require.NoError(t, unix.SchedGetaffinity(0, &allowed))
	var cpus []int
	for i := 0; i < 1024; i++ {
		if allowed.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		t.Skipf("only CPU %v allowed: a pinned thread cannot be told from an unpinned one", cpus)
	}
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, pin := range []bool{true, false} {
			t.Run(fmt.Sprintf("PinCPUs=%v", pin), func(t *testing.T) {
				cfg := testConfig(be)
				cfg.Workers = len(cpus) + 1 // the last one wraps around
				cfg.PinCPUs = pin
				// The factory runs on each worker's goroutine, on the
				// thread the worker starts on.
				var mu sync.Mutex
				tids := make(map[int]int)
				served := make(chan [2]int, 64)
				rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(id int) AsyncEventHandler {
					mu.Lock()
					tids[id] = unix.Gettid()
					mu.Unlock()
					return handlerFunc(func(c ConnCtx) {
						served <- [2]int{c.WorkerID(), unix.Gettid()}
						echoTask(c)
					})
				})
				require.NoError(t, err)
				defer func() { rt.Shutdown(); rt.Wait() }()
				mu.Lock()
				defer mu.Unlock()
				require.Len(t, tids, cfg.Workers)
				for id, tid := range tids {
					var set unix.CPUSet
					require.NoError(t, unix.SchedGetaffinity(tid, &set), "worker %d thread %d", id, tid)
					if pin {
						var want unix.CPUSet
						want.Set(cpus[id%len(cpus)])
						require.Equal(t, want, set, "worker %d (thread %d) must be pinned to CPU %d", id, tid, cpus[id%len(cpus)])
					} else {
						require.Equal(t, allowed, set, "worker %d (thread %d) must keep every allowed CPU", id, tid)
					}
				}
				// A locked worker (io_uring, or pinned) serves connections on
				// the thread measured above; an unpinned epoll worker is not
				// locked (it may park in the netpoller) and may move.
				locked := pin || be == IOUring
				seen := make(map[int]bool)
				for i := 0; i < 64 && len(seen) < cfg.Workers; i++ {
					c := dial(t, rt)
					require.Equal(t, []byte("pinned"), roundTrip(t, c, []byte("pinned")))
					c.Close()
					select {
					case s := <-served:
						if locked {
							require.Equal(t, tids[s[0]], s[1], "worker %d served on another thread", s[0])
						}
						seen[s[0]] = true
					case <-time.After(5 * time.Second):
						t.Fatal("a served connection was not reported")
					}
				}
				require.NotEmpty(t, seen)
			})
		}
	})
}

// Binding an address in use fails Launch with an error wrapping EADDRINUSE
// and leaks nothing.
func TestBindInUse(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer l.Close()
		fd0 := openFDs(t)
		_, err = New(testConfig(be)).Bind(l.Addr().String()).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.Error(t, err)
		require.ErrorIs(t, err, errAddrInUse)
		require.Equal(t, fd0, openFDs(t))
	})
}

// BatchWait keeps echo correct (it only changes how long an enter may wait
// for a batch) and shows in Features on io_uring.
func TestBatchWaitEcho(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BatchWait = 50 * time.Microsecond
		rt := serve(t, cfg, echoTask)
		if be == IOUring && batchWaitCompiled() {
			require.Contains(t, rt.Features(), "batch wait 50us")
		}
		runClients(t, 16, func(i int) error {
			c, err := dialTCP(rt.Addr().String())
			if err != nil {
				return err
			}
			defer c.Close()
			got := make([]byte, 64)
			for j := 0; j < 50; j++ {
				msg := pattern(64, byte(i+j))
				if _, err := c.Write(msg); err != nil {
					return err
				}
				if _, err := io.ReadFull(c, got); err != nil {
					return err
				}
				if !bytes.Equal(msg, got) {
					return fmt.Errorf("message %d: echo differs", j)
				}
			}
			return nil
		})
	})
}

// When the probe passes but an io_uring worker fails to set up, Auto still
// serves (on epoll) and IOUring reports the failure; neither leaks.
func TestAutoFallsBackWhenWorkerSetupFails(t *testing.T) {
	if !uringCompiled || len(availableBackends()) < 2 {
		t.Log("io_uring not available here: nothing to fall back from; checking Epoll launch instead")
	}
	fd0 := openFDs(t)
	testHookWorkerSetup = func(worker int, kind Backend) error {
		if kind == IOUring && worker == 1 {
			return syscall.ENOMEM
		}
		return nil
	}
	defer func() { testHookWorkerSetup = nil }()

	cfg := testConfig(Auto)
	cfg.Workers = 2
	rt := serve(t, cfg, echoTask)
	require.Equal(t, Epoll, rt.Backend())
	c := dial(t, rt)
	require.Equal(t, []byte("fallback"), roundTrip(t, c, []byte("fallback")))

	if uringCompiled && len(availableBackends()) == 2 {
		cfg.Backend = IOUring
		_, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.ErrorIs(t, err, syscall.ENOMEM)
		require.Contains(t, err.Error(), "worker 1")
	}
	c.Close()
	rt.Shutdown()
	rt.Wait()
	require.True(t, settle(5*time.Second, func() bool { return openFDs(t) <= fd0 }), "fds: before %d, after %d", fd0, openFDs(t))
}
