package ringline

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
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
		cfg := testConfig(be)
		logs := captureLog(&cfg)
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
		// The warnings go to a sink nobody reads, not the test's output.
		captureLog(&cfg)
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
// worker, a 100 ms threshold, a 200 ms drain; what the runtime logs goes
// to the returned sink.
func teardownWatchConfig(be Backend) (Config, *logSink) {
	cfg := testConfig(be)
	cfg.Workers = 1
	logs := captureLog(&cfg)
	cfg.StallThreshold = 100 * time.Millisecond
	cfg.ShutdownTimeout = 200 * time.Millisecond
	return cfg, logs
}

// How the watchdog words a stall while the worker serves, and while it
// stops: then its connections are closing, so what waits is the stop.
const (
	stallServingText  = "every connection of this worker waits"
	stallStoppingText = "worker stalled while stopping"
)

func TestWatchdogSeesTeardown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg, logs := teardownWatchConfig(be)
		h := teardownBlocker{started: make(chan struct{})}
		rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return h })
		require.NoError(t, err)
		<-h.started
		time.Sleep(50 * time.Millisecond)
		require.Zero(t, Total(rt.Stats()).Stalls, "no stall before the stop")
		rt.Shutdown()
		rt.Wait()
		assert.NotZero(t, Total(rt.Stats()).Stalls, "a task's deferred call blocking at teardown was not reported")
		assertStoppingStall(t, logs.String(), "a deferred call of a task being stopped")
	})
}

// A SendParts reference still queued when the worker stops is released at
// teardown, after the tasks are gone: a release callback that blocks there
// stalls the stop like any blocking task code, and is reported.
func TestWatchdogSeesBlockingReleaseAtTeardown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg, logs := teardownWatchConfig(be)
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
		assertStoppingStall(t, logs.String(), "release callback")
	})
}

// A task that blocks once the stop has begun (told, while it winds down)
// holds up the stop, and the connections still closing with it: the
// warning says so, not that the worker's connections wait for it.
func TestWatchdogWordsStallWhileDraining(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg, logs := teardownWatchConfig(be)
		cfg.ShutdownTimeout = 2 * time.Second // the drain outlasts the block
		rt := launchIdle(t, cfg)
		started := make(chan struct{})
		require.NoError(t, rt.Post(0, func(tc TaskCtx) {
			close(started)
			if tc.Sleep(time.Hour) == ErrShutdown {
				time.Sleep(400 * time.Millisecond) // the misuse, while winding down
			}
		}))
		<-started
		stop(t, rt)
		assert.Equal(t, uint64(1), Total(rt.Stats()).Stalls)
		assertStoppingStall(t, logs.String(), "a task or a release callback has run without yielding")
	})
}

// assertStoppingStall checks that the log reports a stall as holding up
// the stop (what names the culprit), never as the serving worker's: at
// teardown the connections are closing, not waiting.
func assertStoppingStall(t *testing.T, log, what string) {
	t.Helper()
	assert.Contains(t, log, stallStoppingText)
	assert.Contains(t, log, what)
	assert.NotContains(t, log, stallServingText, "at teardown the connections are closing, not waiting")
}

// postHealthy posts work to worker 0 and waits (30 s at most) until
// healthyTasks of its steps have called stepDone, checking that the
// watchdog looked at the worker meanwhile.
func postHealthy(t *testing.T, rt *Runtime, work func(tc TaskCtx, stepDone func())) {
	t.Helper()
	var steps atomic.Int32
	done := make(chan struct{})
	looks := rt.wd.looks.Load()
	require.NoError(t, rt.Post(0, func(tc TaskCtx) {
		work(tc, func() {
			if steps.Add(1) == healthyTasks {
				close(done)
			}
		})
	}))
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("only %d of %d steps ended", steps.Load(), healthyTasks)
	}
	assert.GreaterOrEqual(t, rt.wd.looks.Load()-looks, uint64(4), "the watchdog looked during the work")
}

// stepWindow is when a test hook's steps ran (the first began, the last
// ended). The tests of one long step judge only the stalls reported
// within it: on a loaded machine other parts of a run (a stop's closes, a
// preempted thread) can pass the threshold too, and are not what they
// test.
type stepWindow struct{ first, last atomic.Int64 }

func (w *stepWindow) step() {
	now := time.Now().UnixNano()
	w.first.CompareAndSwap(0, now)
	w.last.Store(now)
}

// install sets *hook, until the test ends (after the runtime's own
// cleanup, registered later), to a test hook for a long step of steps
// parts: each spins for spin, as healthy work would, and when blocks is
// set the middle one also blocks for healthyBlock; the window follows
// them.
func (w *stepWindow) install(t *testing.T, hook *func(), blocks bool, steps int, spin time.Duration) {
	var n atomic.Int32
	t.Cleanup(func() { *hook = nil })
	*hook = func() {
		w.step()
		if n.Add(1) == int32(steps/2) && blocks {
			time.Sleep(healthyBlock)
		}
		spinFor(spin)
		w.step()
	}
}

// stallsIn counts the stall lines in log (slog's text format, times to
// the millisecond) reported within the window, which must have opened.
func (w *stepWindow) stallsIn(t *testing.T, log string) uint64 {
	t.Helper()
	require.NotZero(t, w.first.Load(), "the hook's steps ran")
	from := time.Unix(0, w.first.Load()).Add(-time.Millisecond)
	to := time.Unix(0, w.last.Load()).Add(time.Millisecond)
	var n uint64
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "worker stalled") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "time=") {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time="))
		if err == nil && !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
}

// assertHealthyStalls is the verdict of a healthyVariants run once rt has
// stopped, given the stalls reported: none when no step blocked (what: the work, for the
// message), and otherwise exactly one, the blocking step's: a stall while
// serving, or, when stopping names what blocked, a stall while stopping
// (assertStoppingStall).
func assertHealthyStalls(t *testing.T, stalls uint64, logs *logSink, blocks bool, what, stopping string) {
	t.Helper()
	if !blocks {
		assert.Zero(t, stalls, "%s was reported as a stall: %s", what, logs.String())
		return
	}
	assert.Equal(t, uint64(1), stalls, "%s: the blocking step among them, once", what)
	if stopping != "" {
		assertStoppingStall(t, logs.String(), stopping)
		return
	}
	assert.Contains(t, logs.String(), stallServingText)
}

// spinFor keeps the calling task busy for d without yielding: short,
// healthy work (a parse, an encode), not a block.
func spinFor(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// healthyTasks tasks that each run healthySpin: 600 ms of work in one
// loop iteration or one teardown step, six times the 100 ms threshold of
// teardownWatchConfig (a look every 25 ms), though no task runs for more
// than a fraction of a millisecond. The watchdog reports a task that runs
// too long, not a worker that does a lot of short work: it must stay
// quiet (before, it timed the whole iteration or teardown step and
// reported it), and still see a task among them that blocks. The
// threshold is not lower: on a loaded 2-core host a worker's thread can
// be kept off its CPU for tens of milliseconds, which no watchdog tells
// from a task that runs.
const (
	healthyTasks = 6000
	healthySpin  = 100 * time.Microsecond
	healthyBlock = 400 * time.Millisecond // the misuse, in the variants that block
)

// healthyVariants are the two runs of each test: healthy work only, and
// the same with one task among them that blocks.
var healthyVariants = []struct {
	name   string
	blocks bool
}{{"healthy", false}, {"one_blocks", true}}

// eachHealthyVariant runs f as a subtest for each of healthyVariants.
func eachHealthyVariant(t *testing.T, f func(t *testing.T, blocks bool)) {
	for _, v := range healthyVariants {
		t.Run(v.name, func(t *testing.T) { f(t, v.blocks) })
	}
}

// spawnHealthy spawns healthyTasks tasks running f(tc, i), from tc, all
// in the current loop iteration (a spawned task is queued, and the loop
// runs its queue empty before it goes back to the kernel). They are
// spawned by a tree of tasks that spawn at most 8 each: one task spawning
// them all would itself run for tens of milliseconds (more under -race)
// without yielding, a true stall, and so would a run of tasks spawning
// 100 each.
func spawnHealthy(tc TaskCtx, f func(tc TaskCtx, i int)) {
	const fanout = 8
	var tree func(tc TaskCtx, lo, hi int)
	tree = func(tc TaskCtx, lo, hi int) {
		step := max((hi-lo+fanout-1)/fanout, 1)
		for a := lo; a < hi; a += step {
			b := min(a+step, hi)
			_, err := tc.Spawn(func(tc TaskCtx) {
				if b-a == 1 {
					f(tc, a)
				} else {
					tree(tc, a, b)
				}
			})
			if err != nil {
				panic(err)
			}
		}
	}
	tree(tc, 0, healthyTasks)
}

// One loop iteration resumes every task of a large batch: the batch
// spawned by one task runs before the loop goes back to the kernel.
func TestWatchdogQuietOnLongHealthyIteration(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		eachHealthyVariant(t, func(t *testing.T, blocks bool) {
			cfg, logs := teardownWatchConfig(be)
			rt := launchIdle(t, cfg)
			postHealthy(t, rt, func(tc TaskCtx, stepDone func()) {
				spawnHealthy(tc, func(_ TaskCtx, i int) {
					if blocks && i == healthyTasks/2 {
						time.Sleep(healthyBlock)
					}
					spinFor(healthySpin)
					stepDone()
				})
			})
			stop(t, rt)
			assertHealthyStalls(t, Total(rt.Stats()).Stalls, logs, blocks, "many short tasks in one iteration", "")
		})
	})
}

// A worker's stop ends every task still alive at the drain's deadline,
// and their deferred calls run then, one after the other.
func TestWatchdogQuietOnLongHealthyTeardown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		eachHealthyVariant(t, func(t *testing.T, blocks bool) {
			cfg, logs := teardownWatchConfig(be)
			rt := launchIdle(t, cfg)
			var started, ended atomic.Int32
			require.NoError(t, rt.Post(0, func(tc TaskCtx) {
				spawnHealthy(tc, func(tc TaskCtx, i int) {
					defer func() {
						if blocks && i == healthyTasks/2 {
							time.Sleep(healthyBlock)
						}
						spinFor(healthySpin)
						ended.Add(1)
					}()
					started.Add(1)
					for {
						_ = tc.Sleep(time.Hour) // ignores the shutdown
					}
				})
			}))
			require.True(t, settle(30*time.Second, func() bool { return started.Load() == healthyTasks }),
				"only %d of %d tasks started", started.Load(), healthyTasks)
			time.Sleep(2 * cfg.StallThreshold) // the spawning iteration is over
			require.Zero(t, Total(rt.Stats()).Stalls, "no stall before the stop")
			stop(t, rt)
			assert.Equal(t, int32(healthyTasks), ended.Load(), "every task was ended at teardown")
			assertHealthyStalls(t, Total(rt.Stats()).Stalls, logs, blocks, "ending many tasks at teardown", "a deferred call of a task being stopped")
		})
	})
}

// Many timers due at once all fire in one step of one loop iteration, and
// a worker's stop tells every open connection to stop in one step: each
// timer or connection is quick, but a worker with very many of them
// spends long there. The hooks make each one take a set time (spinning,
// as healthy work would), so the step lasts several thresholds on any
// machine: the watchdog must stay quiet (before, it timed the whole step
// and reported it), and still see one among them that blocks.
// Between two marks (markEvery steps) at most 16 ms pass, well inside
// teardownWatchConfig's 100 ms threshold.
const (
	stopConns    = 300
	stopConnSpin = time.Millisecond      // 300 ms in all
	timerSpin    = 50 * time.Microsecond // healthyTasks timers: 300 ms in all
)

func TestWatchdogQuietOnManyDueTimers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		eachHealthyVariant(t, func(t *testing.T, blocks bool) {
			var win stepWindow
			win.install(t, &testHookTimerFire, blocks, healthyTasks, timerSpin)
			cfg, logs := teardownWatchConfig(be)
			rt := launchIdle(t, cfg)
			postHealthy(t, rt, func(tc TaskCtx, stepDone func()) {
				// One deadline for all: they are armed in this loop
				// iteration (spawnHealthy), so the first fireTimers to
				// find it due fires every one of them.
				at := time.Now().Add(50 * time.Millisecond)
				spawnHealthy(tc, func(tc TaskCtx, _ int) {
					if tc.SleepUntil(at) == nil {
						stepDone()
					}
				})
			})
			stop(t, rt)
			assertHealthyStalls(t, win.stallsIn(t, logs.String()), logs, blocks, "many timers firing in one iteration", "")
		})
	})
}

func TestWatchdogQuietOnStopOfManyConnections(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		eachHealthyVariant(t, func(t *testing.T, blocks bool) {
			var win stepWindow
			win.install(t, &testHookStopConn, blocks, stopConns, stopConnSpin)
			cfg, logs := teardownWatchConfig(be)
			rt := serve(t, cfg, echoTask)
			for i := 0; i < stopConns; i++ {
				dial(t, rt)
			}
			require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).Accepted == stopConns }),
				"accepted %d of %d", Total(rt.Stats()).Accepted, stopConns)
			require.Zero(t, Total(rt.Stats()).Stalls, "no stall before the stop")
			looks := rt.wd.looks.Load()
			stop(t, rt)
			assert.GreaterOrEqual(t, rt.wd.looks.Load()-looks, uint64(4), "the watchdog looked during the stop")
			assertHealthyStalls(t, win.stallsIn(t, logs.String()), logs, blocks, "telling many connections to stop", "a task or a release callback")
		})
	})
}
