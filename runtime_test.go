package ringline

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

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
		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c, err := net.Dial("tcp", rt.Addr().String())
				if !assert.NoError(t, err) {
					return
				}
				defer c.Close()
				msg := pattern(20000, byte(i))
				go c.Write(msg)
				got := make([]byte, len(msg))
				_, err = io.ReadFull(c, got)
				assert.NoError(t, err)
				assert.True(t, bytes.Equal(msg, got))
			}(i)
		}
		wg.Wait()
	})
}

// The counters move with the traffic, and on io_uring the batching shows:
// far fewer cgo calls and enters than operations.
func TestCounters(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
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
		if be == IOUring {
			assert.NotZero(t, st.CgoCalls)
			assert.LessOrEqual(t, st.RingEnters, st.CgoCalls+1)
		} else {
			assert.Zero(t, st.CgoCalls)
		}
	})
}

// PinCPUs pins each worker; the runtime still serves.
func TestPinCPUs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 2
		cfg.PinCPUs = true
		rt := serve(t, cfg, echoTask)
		c := dial(t, rt)
		require.Equal(t, []byte("pinned"), roundTrip(t, c, []byte("pinned")))
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
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c, err := net.Dial("tcp", rt.Addr().String())
				if !assert.NoError(t, err) {
					return
				}
				defer c.Close()
				for j := 0; j < 50; j++ {
					msg := pattern(64, byte(i+j))
					if _, err := c.Write(msg); !assert.NoError(t, err) {
						return
					}
					got := make([]byte, 64)
					if _, err := io.ReadFull(c, got); !assert.NoError(t, err) {
						return
					}
					assert.Equal(t, msg, got)
				}
			}(i)
		}
		wg.Wait()
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
