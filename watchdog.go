package ringline

import (
	"sync/atomic"
	"time"
)

// stallWatch is what the watchdog shares with the workers so that it can
// sleep while they all wait in the kernel: an idle runtime then has no
// timer of its own and costs no CPU, and a worker that turns busy wakes
// the watchdog before its iteration could last long enough to be a stall.
//
// The handshake is a store then a load on each side (Go's atomics are
// sequentially consistent): the watchdog sets asleep, then checks that
// every worker is still waiting; a worker marks itself busy (busyMark),
// then checks asleep. Whichever comes second sees the other, so a worker
// cannot turn busy unseen by a watchdog that goes to sleep.
type stallWatch struct {
	// asleep is set by the watchdog before it sleeps and cleared by
	// whoever wakes it: the first worker to find it set, which then puts
	// the one token in wake, or the watchdog itself when its check finds
	// a busy worker first.
	asleep atomic.Bool
	wake   chan struct{} // capacity 1: one token per sleep
	looks  atomic.Uint64 // times the watchdog looked at the workers
}

func newStallWatch() *stallWatch { return &stallWatch{wake: make(chan struct{}, 1)} }

// rouse wakes a sleeping watchdog. A worker calls it right after marking
// itself busy; when the watchdog is awake it costs one atomic load.
func (s *stallWatch) rouse() {
	if s.asleep.Load() && s.asleep.CompareAndSwap(true, false) {
		select {
		case s.wake <- struct{}{}:
		default: // not reached: the watchdog takes each token before it sleeps again
		}
	}
}

// watchdog runs off the workers' threads and reports a worker whose
// progress mark (busyMark) has stayed the same for longer than
// Config.StallThreshold: a task that has run that long without yielding,
// in practice one that blocks (time.Sleep, a channel, a mutex, net) and
// stalls every connection of its worker, or, once the worker stops, its
// stop (the warning says which, from the mark's busyPart). A worker
// marks itself afresh at each loop iteration and every markEvery steps
// within one (task runs, release callbacks, timers fired, connections
// told to stop), so a long iteration of short steps is not a stall.
// Each stall is counted and logged once. It looks every
// StallThreshold/4, and sleeps once two looks in a row find every worker
// waiting in the kernel and, as far as the published loop counts tell,
// idle since the look before; the first worker to begin an iteration
// wakes it, and it looks at once.
func (rt *Runtime) watchdog() {
	limit := rt.cfg.StallThreshold
	period := max(limit/4, time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	// The loop counts the workers published at the last look: a worker
	// publishes before each wait that may block, so an unchanged count and
	// an idle busyMark suggest it has been waiting since then. It is only a
	// hint (a worker publishes every 64 iterations while busy, and not
	// before a wait that cannot block); a wrong guess costs a sleep that
	// the worker ends at once, as the handshake in watchdogSleep ensures.
	loops := make([]uint64, len(rt.workers))
	woken := false
	idleLooks := 0 // looks in a row that found every worker idle
	for {
		// Woken, the watchdog looks at once: the iteration that woke it
		// has just begun, and its stall is reported StallThreshold after
		// that, not a period later.
		if !woken {
			select {
			case <-rt.done:
				return
			case <-tick.C:
			}
		}
		woken = false
		rt.wd.looks.Add(1)
		idle := true
		for i, w := range rt.workers {
			mark, now, n := w.busyMark.Load(), w.now(), w.pub.loops.Load()
			if mark != 0 || n != loops[i] {
				idle = false
			}
			loops[i] = n
			if mark == 0 || mark != w.wdMark {
				// Waiting in the kernel, or progress since the last look
				// (a new iteration, or more task runs in this one):
				// nothing is stuck. A stall is timed from the first look
				// that saw its mark.
				w.wdMark, w.wdSince, w.wdReported = mark, now, false
				w.stuckSince.Store(0)
				continue
			}
			w.stuckSince.Store(w.wdSince)
			if w.wdReported || time.Duration(now-w.wdSince) < limit {
				continue
			}
			w.wdReported = true
			w.pub.stalls.Add(1)
			rt.cfg.Logger.Warn(stallWarning(busyPart(mark&partMask)),
				"worker", w.id, "running_for_at_least", time.Duration(now-w.wdSince).Round(time.Millisecond), "threshold", limit)
		}
		if !idle {
			idleLooks = 0
			continue
		}
		// Two idle looks in a row, so that a look that happens to fall
		// between two busy iterations (the one right after a wake, say)
		// does not put the watchdog to sleep for the next one to wake.
		if idleLooks++; idleLooks >= 2 {
			idleLooks = 0
			tick.Stop()
			if !rt.watchdogSleep() {
				return
			}
			tick.Reset(period)
			woken = true
		}
	}
}

// watchdogSleep waits until a worker turns busy, or returns false when the
// runtime has stopped.
func (rt *Runtime) watchdogSleep() bool {
	s := rt.wd
	s.asleep.Store(true)
	for _, w := range rt.workers {
		if w.busyMark.Load() != 0 {
			if s.asleep.CompareAndSwap(true, false) {
				return true // busy before any worker saw asleep: no token
			}
			break // a worker cleared asleep, and its token is on the way
		}
	}
	select {
	case <-rt.done:
		return false
	case <-s.wake:
		return true
	}
}

// stallCulprit names, per busyPart, what has run too long, for the
// watchdog's warning and ShutdownContext's error, and the rule it broke.
// The loop runs tasks and release callbacks between two marks and cannot
// tell which one stalled; teardown runs one kind at a time.
var stallCulprit = [...]struct{ who, without, rule string }{
	partServing:     {"a task or a release callback", "yielding", "a task must not block: no time.Sleep, channel waits, long mutex holds or net calls"},
	partStopping:    {"a task or a release callback", "yielding", "a task must not block, also while it winds down"},
	partEndingTasks: {"a deferred call of a task being stopped", "returning", "a task's deferred calls must not block either"},
	partReleasing:   {"a SendBuilder.Ref release callback", "returning", "a release callback must not block"},
}

// stallWarning is the watchdog's warning for a stall in part p. While the
// worker serves, every connection of the worker waits on it; once the
// stop has begun the connections are closing, and what waits is the
// stop (and, during the drain, the connections still closing).
func stallWarning(p busyPart) string {
	c := stallCulprit[p]
	head, waits := "ringline: worker stalled while stopping: ", "so the worker's stop is held up"
	switch p {
	case partServing:
		head, waits = "ringline: worker stalled: ", "so every connection of this worker waits"
	case partStopping:
		waits = "so the worker's stop waits, and every connection still closing with it"
	}
	return head + c.who + " has run without " + c.without + ", " + waits + " (" + c.rule + ")"
}
