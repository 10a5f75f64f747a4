package ringline

import (
	"context"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A handler that blocks (time.Sleep) stalls its worker; the watchdog,
// running off the worker's thread, notices while it is still blocked,
// counts it once and logs it.
func TestWatchdogReportsBlockingHandler(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var logs syncBuffer
		cfg := testConfig(be)
		cfg.Logger = newTestLogger(&logs)
		cfg.StallThreshold = 100 * time.Millisecond
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			time.Sleep(600 * time.Millisecond) // the misuse
			echoTask(c)
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("s"))
		require.NoError(t, err)
		require.True(t, settle(2*time.Second, func() bool { return Total(rt.Stats()).Stalls > 0 }), "stall not reported")
		require.Equal(t, []byte("after"), roundTrip(t, cl, []byte("after")))
		assert.Equal(t, uint64(1), Total(rt.Stats()).Stalls, "one stall, counted once")
		assert.Contains(t, logs.String(), "worker stalled")
	})
}

// A busy but healthy worker is never reported.
func TestWatchdogQuietUnderLoad(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		c := dial(t, rt)
		msg := pattern(32<<10, 1)
		for i := 0; i < 50; i++ {
			roundTrip(t, c, msg)
		}
		assert.Zero(t, Total(rt.Stats()).Stalls)
	})
}

// ShutdownContext bounds the wait for a worker whose task never yields,
// naming it, instead of hanging like Wait.
func TestShutdownContextNamesStuckWorker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		release := make(chan struct{})
		blocked := make(chan struct{})
		cfg := testConfig(be)
		cfg.Workers = 1
		rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
			return handlerFunc(func(c ConnCtx) {
				close(blocked)
				<-release // the misuse: a task blocked on a channel
			})
		})
		require.NoError(t, err)
		cl, err := net.Dial("tcp", rt.Addr().String())
		require.NoError(t, err)
		defer cl.Close()
		<-blocked
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		err = rt.ShutdownContext(ctx)
		require.Error(t, err)
		assert.Less(t, time.Since(start), 5*time.Second)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Contains(t, err.Error(), "worker 0")
		assert.Contains(t, err.Error(), "without yielding")
		close(release)
		require.NoError(t, rt.ShutdownContext(context.Background()), "once the task lets go, shutdown completes")
	})
}

// By default a second server cannot take a port another socket holds;
// with ReusePort it may share it.
func TestBindRefusesSharedPortUnlessReusePort(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 2
		first := serve(t, cfg, echoTask)
		addr := first.Addr().String()
		_, err := New(cfg).Bind(addr).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.ErrorIs(t, err, syscall.EADDRINUSE)
		assert.Contains(t, err.Error(), "ReusePort")

		// Both opt in: they share.
		cfg.ReusePort = true
		a := serve(t, cfg, echoTask)
		b, err := New(cfg).Bind(a.Addr().String()).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		defer func() { b.Shutdown(); b.Wait() }()
	})
}

// Config errors say what is valid, and print durations as durations.
func TestConfigErrorText(t *testing.T) {
	_, err := New(Config{Workers: -1}).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.Error(t, err)
	assert.Contains(t, err.Error(), "0 (one per CPU) or 1..1024")
	_, err = New(Config{BatchWait: 20 * time.Millisecond}).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	require.Error(t, err)
	assert.Contains(t, err.Error(), "= 20ms")
	assert.False(t, strings.Contains(err.Error(), "20000000"))
	_, err = New(Config{SendPoolSlots: 4, SendSlotSize: 4096, MaxSendQueue: 1 << 20}).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "MaxSendQueue", ce.Field)
}

// An idle runtime costs no CPU: once every worker has waited in the
// kernel for a while the watchdog stops looking (before, it woke every
// StallThreshold/4 for as long as the runtime lived), and a worker that
// turns busy again wakes it, so a stall after a long idle spell is still
// caught.
func TestWatchdogSleepsWhileIdle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Logger = newTestLogger(&syncBuffer{})
		cfg.StallThreshold = 100 * time.Millisecond // a look every 25 ms
		block := make(chan struct{}, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			for c.WithData(func(b []byte) ParseResult {
				if b[0] == 's' {
					block <- struct{}{}
				}
				return Consumed(len(b))
			}) > 0 {
				select {
				case <-block:
					time.Sleep(300 * time.Millisecond) // the misuse
				default:
				}
			}
		})
		cl := dial(t, rt)
		// Idle: the watchdog's looks stop within a few of them.
		require.True(t, settle(2*time.Second, func() bool {
			n := rt.wd.looks.Load()
			time.Sleep(150 * time.Millisecond) // six periods
			return rt.wd.looks.Load() == n && rt.wd.asleep.Load()
		}), "the watchdog of an idle runtime keeps looking (%d looks) or is not asleep", rt.wd.looks.Load())
		_, err := cl.Write([]byte("s"))
		require.NoError(t, err)
		require.True(t, settle(2*time.Second, func() bool { return Total(rt.Stats()).Stalls > 0 }),
			"a stall after an idle spell was not reported")
		assert.Equal(t, uint64(1), Total(rt.Stats()).Stalls)
	})
}

// A task still alive when the drain ends is stopped at teardown, and its
// deferred calls run then: one that blocks stalls the worker's stop like
// any blocking task, and the watchdog reports it (before, teardown ran
// with the worker marked as waiting, so it went unseen).
type teardownBlocker struct{ started chan struct{} }

func (teardownBlocker) OnAccept(ConnCtx) {}
func (b teardownBlocker) OnStart(t TaskCtx) {
	close(b.started)
	defer time.Sleep(600 * time.Millisecond) // the misuse, at teardown
	for {
		_ = t.Sleep(10 * time.Millisecond) // ignores the shutdown
	}
}

// teardownWatchConfig is the config of the teardown stall tests: one
// worker, a 100 ms threshold, a 200 ms drain.
func teardownWatchConfig(be Backend) Config {
	cfg := testConfig(be)
	cfg.Workers = 1
	cfg.Logger = newTestLogger(&syncBuffer{})
	cfg.StallThreshold = 100 * time.Millisecond
	cfg.ShutdownTimeout = 200 * time.Millisecond
	return cfg
}

func TestWatchdogSeesTeardown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := teardownWatchConfig(be)
		h := teardownBlocker{started: make(chan struct{})}
		rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return h })
		require.NoError(t, err)
		<-h.started
		time.Sleep(50 * time.Millisecond)
		require.Zero(t, Total(rt.Stats()).Stalls, "no stall before the stop")
		rt.Shutdown()
		rt.Wait()
		assert.NotZero(t, Total(rt.Stats()).Stalls, "a task's deferred call blocking at teardown was not reported")
	})
}

// A SendParts reference still queued when the worker stops is released at
// teardown, after the tasks are gone: a release callback that blocks there
// stalls the stop like any blocking task code, and is reported.
func TestWatchdogSeesBlockingReleaseAtTeardown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := teardownWatchConfig(be)
		cfg.MaxSendQueue = cfg.SendPoolSlots * cfg.SendSlotSize
		// The peer reads nothing: the last references are still queued
		// when the worker stops.
		rt := serveStalledRefs(t, cfg, 100, func(i int) func() {
			if i == 99 {
				return func() { time.Sleep(600 * time.Millisecond) } // the misuse
			}
			return nil
		})
		require.Zero(t, Total(rt.Stats()).Stalls, "no stall before the stop")
		stop(t, rt)
		assert.NotZero(t, Total(rt.Stats()).Stalls, "a release callback blocking at teardown was not reported")
	})
}
