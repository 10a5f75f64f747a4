package ringline

import (
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// alwaysPark makes the unlocked epoll workers launched during the test
// park for every blocking wait after their first (every wait counts as
// long, and no run of short ones switches them back), with no cap on a
// park: a lost wake-up then stalls the test instead of costing a second.
func alwaysPark(t *testing.T) { parkSettings(t, -1, [2]int{1, 1 << 30}) }

// neverPark makes them block in epoll_wait for every wait.
func neverPark(t *testing.T) { parkSettings(t, time.Hour, [2]int{1 << 30, 1}) }

// parkSettings sets what backends made during the test copy (before
// Launch: the workers read them as they start).
func parkSettings(t *testing.T, after time.Duration, sw [2]int) {
	prevAfter, prevSwitch, prevCap := longWaitAfter, longWaitSwitch, epParkCap
	longWaitAfter, longWaitSwitch, epParkCap = after, sw, time.Hour
	t.Cleanup(func() { longWaitAfter, longWaitSwitch, epParkCap = prevAfter, prevSwitch, prevCap })
}

// parkConfig is testConfig(Epoll) without held waits (Config.HoldWait),
// so that every blocking wait goes the way the park settings say (a held
// wait would catch the short ones before they block or park).
func parkConfig() Config {
	cfg := testConfig(Epoll)
	cfg.HoldWait = -1
	return cfg
}

// epollOf returns rt's first worker's epoll backend. Read its counters
// only once the runtime is done (the worker owns them until then).
func epollOf(t *testing.T, rt *Runtime) *epollBackend {
	t.Helper()
	b, ok := rt.workers[0].be.(*epollBackend)
	require.True(t, ok, "worker 0 runs on epoll")
	return b
}

// A parked worker serves connections as a blocking one does: echoes with
// idle gaps between them (each gap a parked wait) come back whole, and the
// worker did park.
func TestEpollParkedWorkerEchoes(t *testing.T) {
	alwaysPark(t)
	rt := serve(t, parkConfig(), echoTask)
	b := epollOf(t, rt)
	require.True(t, b.canPark, "an epoll worker without PinCPUs may park")
	c := dial(t, rt)
	for i := 0; i < 20; i++ {
		msg := pattern(1000+i*700, byte(i))
		assert.Equal(t, msg, roundTrip(t, c, msg), "round %d", i)
		time.Sleep(2 * time.Millisecond)
	}
	c.Close()
	stop(t, rt)
	assert.GreaterOrEqual(t, b.parks, uint64(19), "the worker parked between the rounds")
	assert.Nil(t, b.park, "the netpoller's dup of the epoll fd is closed at teardown")
}

// A ping-pong with a worker that parks on every wait: events that arrive
// between the worker's last look at the epoll set and its park must wake
// it (the netpoller forgets readiness it saw before the park began, so the
// look has to come after that point). Lost, the next byte never comes and
// the client times out.
func TestEpollParkedPingPong(t *testing.T) {
	alwaysPark(t)
	rt := serve(t, parkConfig(), echoTask)
	b := epollOf(t, rt)
	c := dial(t, rt)
	var one [1]byte
	for i := 0; i < 5000; i++ {
		require.NoError(t, c.SetDeadline(time.Now().Add(2*time.Second)))
		_, err := c.Write([]byte{byte(i)})
		require.NoError(t, err)
		_, err = io.ReadFull(c, one[:])
		require.NoError(t, err, "round trip %d", i)
		require.Equal(t, byte(i), one[0])
	}
	c.Close()
	stop(t, rt)
	assert.Greater(t, b.parks, uint64(1000), "the worker parked between round trips")
}

// A parked worker wakes for its own timers (the park's read deadline), for
// a goroutine's Post, and for shutdown.
func TestEpollParkedWorkerWakes(t *testing.T) {
	alwaysPark(t)
	rt := launchIdle(t, parkConfig())
	b := epollOf(t, rt)
	slept := make(chan time.Duration, 1)
	require.NoError(t, rt.Post(0, func(tc TaskCtx) {
		t0 := time.Now()
		_ = tc.Sleep(30 * time.Millisecond)
		slept <- time.Since(t0)
	}))
	select {
	case d := <-slept:
		assert.GreaterOrEqual(t, d, 30*time.Millisecond, "a timer never fires early")
	case <-time.After(5 * time.Second): // parks are not capped here
		t.Fatal("a parked worker's timer did not fire")
	}
	for i := 0; i < 50; i++ {
		time.Sleep(time.Millisecond) // let the worker park again
		ran := make(chan struct{})
		require.NoError(t, rt.Post(0, func(TaskCtx) { close(ran) }))
		select {
		case <-ran:
		case <-time.After(5 * time.Second): // parks are not capped here
			t.Fatalf("post %d did not wake the parked worker", i)
		}
	}
	time.Sleep(time.Millisecond)
	stop(t, rt)
	assert.Greater(t, b.parks, uint64(25), "the worker was parked when most posts came")
}

// Launching and stopping parking workers leaves no descriptor behind (the
// dup of the epoll fd the netpoller watches is closed with the backend).
func TestEpollParkLeavesNoFd(t *testing.T) {
	alwaysPark(t)
	before := allFDs(t)
	for i := 0; i < 5; i++ {
		cfg := parkConfig()
		cfg.Workers = 2
		rt := serve(t, cfg, echoTask)
		c := dial(t, rt)
		roundTrip(t, c, []byte("ping"))
		c.Close()
		stop(t, rt)
	}
	assert.True(t, settle(2*time.Second, func() bool { return allFDs(t) <= before }),
		"descriptors: %d before, %d after", before, allFDs(t))
}

// A worker locked to its thread (PinCPUs) never parks: a locked goroutine
// that parks hands its thread to another on every wait.
func TestEpollPinnedWorkerDoesNotPark(t *testing.T) {
	alwaysPark(t)
	cfg := parkConfig()
	cfg.PinCPUs = true
	rt := serve(t, cfg, echoTask)
	b := epollOf(t, rt)
	assert.False(t, b.canPark)
	c := dial(t, rt)
	roundTrip(t, c, []byte("ping"))
	c.Close()
	stop(t, rt)
	assert.Zero(t, b.parks)
}

// The way of waiting follows the waits, with hysteresis: two long waits in
// a row make the worker park (or hold: waitMode), and so do long waits
// that outweigh the short ones between them two to one; eight short ones
// in a row make it block again, and a long one resets that count.
func TestEpollParkAdapts(t *testing.T) {
	b := struct{ mode waitMode }{waitMode{sw: [2]int{2, 8}}}
	steps := []struct {
		long, parking bool
	}{
		{true, false}, {false, false}, // a lone long wait does not switch
		{true, false}, {true, true}, // two in a row do
		{false, true}, {false, true}, {false, true}, {false, true},
		{false, true}, {false, true}, {false, true},
		{true, true}, // a long one resets the run of short ones
		{false, true}, {false, true}, {false, true}, {false, true},
		{false, true}, {false, true}, {false, true}, {false, false}, // the eighth switches back
		// Long waits with a short one after each (an io_uring worker's
		// own send completions) switch after the third long one.
		{true, false}, {false, false}, {true, false}, {false, false}, {true, true},
		{false, true}, {false, true}, {false, true}, {false, true},
		{false, true}, {false, true}, {false, true}, {false, false},
		// One long wait in five does not.
		{true, false}, {false, false}, {false, false}, {false, false}, {false, false},
		{true, false}, {false, false}, {false, false}, {false, false}, {false, false},
	}
	for i, s := range steps {
		was := b.mode.long
		switched := b.mode.record(s.long)
		require.Equal(t, s.parking, b.mode.long, "step %d (long=%v)", i, s.long)
		require.Equal(t, was != s.parking, switched, "step %d reports the switch", i)
	}
}

// The dup of the epoll fd is in the netpoller only while the worker parks:
// a worker whose waits turn short again takes it out (registered, every
// event of its sockets would also wake a thread blocked in the netpoller).
func TestEpollParkRegistersOnlyWhileParking(t *testing.T) {
	parkSettings(t, 100*time.Millisecond, [2]int{1, 1})
	rt := serve(t, parkConfig(), echoTask)
	b := epollOf(t, rt)
	parked := func() bool {
		ch := make(chan bool, 1)
		require.NoError(t, rt.Post(0, func(TaskCtx) { ch <- b.park != nil }))
		return <-ch
	}
	time.Sleep(300 * time.Millisecond) // one long wait: the worker parks
	require.True(t, parked(), "a worker whose wait was long parks")
	// The post's wake-up was a short wait; a busy ping-pong keeps them short.
	c := dial(t, rt)
	for i := 0; i < 50; i++ {
		roundTrip(t, c, []byte("ping"))
	}
	require.False(t, parked(), "short waits take the dup out of the netpoller")
	c.Close()
}

// An event that reaches the epoll set while a park is being set up (here:
// bytes from the peer, written and given time to reach the netpoller just
// before the park's Read resets its readiness) still ends the park at once.
// A look at the epoll set made before that reset would miss it, nothing
// else would come, and the echo would wait for the park's deadline.
func TestEpollParkSeesEventsFromBeforeIt(t *testing.T) {
	alwaysPark(t)
	var fire atomic.Bool
	var c net.Conn // set before fire
	wrote := make(chan error, 1)
	// Set before Launch and cleared after the runtime has stopped (cleanups
	// run last-registered first): the workers read it.
	testHookBeforePark = func(*epollBackend) {
		if fire.CompareAndSwap(true, false) {
			_, err := c.Write([]byte{'x'})
			wrote <- err
			time.Sleep(2 * time.Millisecond) // the netpoller records the readiness
		}
	}
	t.Cleanup(func() { testHookBeforePark = nil })
	rt := serve(t, parkConfig(), echoTask)
	c = dial(t, rt)
	roundTrip(t, c, []byte("warm"))
	var got [1]byte
	for i := 0; i < 20; i++ {
		fire.Store(true)
		// A post wakes the worker; its next wait parks and fires the hook.
		require.NoError(t, rt.Post(0, func(TaskCtx) {}))
		select {
		case err := <-wrote:
			require.NoError(t, err)
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the worker did not park again", i)
		}
		require.NoError(t, c.SetReadDeadline(time.Now().Add(500*time.Millisecond)))
		_, err := io.ReadFull(c, got[:])
		require.NoError(t, err, "round %d: bytes that arrived as the park began did not end it", i)
	}
}

// With GOMAXPROCS=1 a goroutine shares the only P with an idle worker,
// blocking or parked: it keeps running while the worker waits (a worker
// that held its P while waiting would let it run only when sysmon
// preempted the worker, every 10 ms or more), and the worker still serves.
func TestEpollWaitingWorkerLeavesThePShared(t *testing.T) {
	for _, park := range []bool{false, true} {
		t.Run(map[bool]string{false: "blocking", true: "parking"}[park], func(t *testing.T) {
			if park {
				alwaysPark(t)
			} else {
				neverPark(t)
			}
			prev := runtime.GOMAXPROCS(1)
			defer runtime.GOMAXPROCS(prev)
			rt := serve(t, testConfig(Epoll), echoTask)
			const turns = 1000
			var done atomic.Int64
			finished := make(chan time.Duration, 1)
			go func() {
				t0 := time.Now()
				for i := 0; i < turns; i++ {
					time.Sleep(100 * time.Microsecond)
					done.Add(1)
				}
				finished <- time.Since(t0)
			}()
			c := dial(t, rt)
			for i := 0; i < 20; i++ {
				roundTrip(t, c, []byte("ping"))
			}
			select {
			case d := <-finished:
				// 1,000 sleeps of 100 µs take well under a second here; with
				// the P held they would take 10 s or more.
				assert.Less(t, d, 5*time.Second, "%d sleeps of 100 µs beside an idle worker", turns)
			case <-time.After(20 * time.Second):
				t.Fatalf("a goroutine sharing the P with the worker made %d of %d turns in 20s", done.Load(), turns)
			}
			c.Close()
		})
	}
}

// Out of descriptors when it would start parking (the dup fails with
// EMFILE), a worker blocks in epoll_wait instead and tries again at its
// next switch: it parks once descriptors are available again.
func TestEpollParkOutOfDescriptorsRetries(t *testing.T) {
	parkSettings(t, 50*time.Millisecond, [2]int{1, 1}) // one long wait parks, one short one stops
	rt := serve(t, parkConfig(), echoTask)
	b := epollOf(t, rt)
	state := func() (parked, canPark bool) {
		ch := make(chan [2]bool, 1)
		require.NoError(t, rt.Post(0, func(TaskCtx) { ch <- [2]bool{b.park != nil, b.canPark} }))
		s := <-ch
		return s[0], s[1]
	}
	var prev unix.Rlimit
	require.NoError(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &prev))
	restore := func() { require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &prev)) }
	defer restore()
	// The lowest free descriptor number as the limit: no new one fits.
	free := 0
	for ; ; free++ {
		if _, err := os.Stat("/proc/self/fd/" + strconv.Itoa(free)); err != nil {
			break
		}
	}
	require.NoError(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(free), Max: prev.Max}))
	time.Sleep(200 * time.Millisecond) // a long wait: the worker tries to park
	parked, canPark := state()
	assert.False(t, parked, "no descriptor for the dup: the worker blocks")
	assert.True(t, canPark, "running out of descriptors does not end parking for good")
	restore()
	time.Sleep(200 * time.Millisecond)
	parked, _ = state()
	assert.True(t, parked, "with descriptors again, the next long wait parks")
}

// A park that reaches its cap (a safety net against a lost wake-up) with
// nothing to report parks again instead of handing the loop an empty turn:
// an idle parked worker made one loop iteration per cap (a second), and
// each woke the sleeping watchdog. The renewed park is still one wait,
// one park, in the counters (RingEnters stays at most one per loop
// iteration).
func TestEpollParkCapIsNoTurn(t *testing.T) {
	alwaysPark(t)
	epParkCap = 20 * time.Millisecond
	cfg := parkConfig()
	cfg.Workers = 1
	cfg.StallThreshold = 40 * time.Millisecond
	rt := serve(t, cfg, echoTask)
	b := epollOf(t, rt)
	c := dial(t, rt)
	for i := 0; i < 3; i++ {
		assert.Equal(t, []byte("x"), roundTrip(t, c, []byte("x")))
		time.Sleep(2 * time.Millisecond)
	}
	type snap struct {
		parked                       bool
		loops, waits, parks, renewed uint64
	}
	look := func() snap { // on the worker, which owns these counters
		ch := make(chan snap, 1)
		require.NoError(t, rt.Post(0, func(TaskCtx) {
			ch <- snap{b.park != nil, rt.workers[0].st.loops, b.nWait, b.parks, b.parksRenewed}
		}))
		return <-ch
	}
	var s0, s1 snap
	require.True(t, settle(2*time.Second, func() bool {
		s0 = look()
		time.Sleep(200 * time.Millisecond) // ten caps
		asleep := rt.wd.asleep.Load()      // before look wakes the worker, and it the watchdog
		s1 = look()
		return s1.loops-s0.loops <= 3 && asleep
	}), "an idle parked worker keeps turning (%d loops in 200 ms) or the watchdog is awake", s1.loops-s0.loops)
	assert.True(t, s1.parked, "the worker parks")
	assert.GreaterOrEqual(t, s1.renewed-s0.renewed, uint64(5), "parks renewed at the cap")
	assert.LessOrEqual(t, s1.waits-s0.waits, s1.loops-s0.loops+1, "a renewed park counts as one wait")
	assert.LessOrEqual(t, s1.parks-s0.parks, s1.loops-s0.loops+1, "a renewed park counts as one park")
	// Still served after many renewed parks.
	assert.Equal(t, []byte("after"), roundTrip(t, c, []byte("after")))
}
