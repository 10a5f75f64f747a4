package ringline

import (
	"time"
	"unsafe"
)

// The worker's timers: a binary min-heap of deadlines kept in the core, so
// both backends share one notion of time and one rule for it. The earliest
// deadline becomes the backend's wait timeout, so arming, firing and
// cancelling a timer cost no syscall and no cgo call of their own: they
// ride the loop's one enter per iteration.
//
// Nodes live inside what they time (a connection's read and write
// deadlines and drain deadline in its connTimers, the listener's accept
// pause) or in a per-worker pool (Timer futures, and a task's Sleep, which
// borrows one), and carry their heap position, so
// arming, moving and cancelling are O(log n) with no allocation. A deadline
// that is only pushed later (an idle timeout renewed after every parse) is
// not moved in the heap at all: the node fires at the old time, sees the
// later one and re-arms once.
//
// A heap, not a wheel, by measurement (docs/BENCHMARKS.md): at 100,000
// timers arm+cancel costs about as much as a wheel slot update, it needs
// no tick, and most deadlines are renewed lazily as above.

// Timer kinds: what firing means.
const (
	tmAcceptRetry   uint8 = iota + 1 // re-arm the listener's accept after an error pause
	tmDrain                          // a closing connection's unsent bytes ran out of time
	tmReadDeadline                   // a connection's read deadline
	tmWriteDeadline                  // a connection's write deadline
	tmTask                           // wake node.task (Sleep, Timer futures)
	tmTLSClose                       // a closing TLS connection stops waiting for the peer's close_notify
)

// timerNode is one armed (or idle) timer.
type timerNode struct {
	at int64 // due, in worker clock nanoseconds
	// slot is the node's index in the heap plus one; 0 when not armed, so
	// a zero node (in a connection's connTimers, the listener's pause) is
	// a disarmed one.
	slot int32
	kind uint8
	// fired is set when a tmTask node goes off (cleared when the node is
	// taken from the pool).
	fired bool
	// pooled: a Timer future's node (a pooledTimer), back to the pool when
	// it fires. A Sleep's node is a pooledTimer too, but with pooled
	// cleared while it sleeps: endSleep gives it back.
	pooled bool
	conn   *conn // tmDrain, tmReadDeadline, tmWriteDeadline
	task   *task // tmTask: the task to wake
}

// pooledTimer is a Timer future's node with the history only Timer needs,
// kept out of timerNode because every connection's connTimers holds three: gen
// names the current use of the node, and stopped records, for the last 64
// uses, which ended by Stop. The node is the first field, so the heap's
// *timerNode of a pooled node converts back (asPooled).
type pooledTimer struct {
	timerNode
	gen     uint32
	stopped uint64
}

// asPooled returns the pooledTimer a pooled node is the first field of.
func (n *timerNode) asPooled() *pooledTimer { return (*pooledTimer)(unsafe.Pointer(n)) }

func (n *timerNode) armed() bool { return n.slot > 0 }

type timerHeap []*timerNode

func (h timerHeap) less(i, j int) bool { return h[i].at < h[j].at }

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].slot = int32(i + 1)
	h[j].slot = int32(j + 1)
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h.swap(i, m)
		i = m
	}
}

// set arms n at time at, or moves it there if it is armed.
func (h *timerHeap) set(n *timerNode, at int64) {
	if n.slot > 0 {
		old := n.at
		n.at = at
		if at < old {
			h.up(int(n.slot - 1))
		} else {
			h.down(int(n.slot - 1))
		}
		return
	}
	n.at = at
	*h = append(*h, n)
	n.slot = int32(len(*h))
	h.up(len(*h) - 1)
}

// remove disarms n; a node that is not armed is left alone.
func (h *timerHeap) remove(n *timerNode) {
	i := int(n.slot) - 1
	if i < 0 {
		return
	}
	s := *h
	last := len(s) - 1
	if i != last {
		s.swap(i, last)
	}
	s[last] = nil
	*h = s[:last]
	n.slot = 0
	if i != last {
		(*h).down(i)
		(*h).up(i)
	}
}

// pop removes and returns the earliest node.
func (h *timerHeap) pop() *timerNode {
	n := (*h)[0]
	h.remove(n)
	return n
}

// now is the worker's monotonic clock, in nanoseconds since it started.
func (w *worker) now() int64 { return int64(time.Since(w.epoch)) }

// clockAt converts a wall time to the worker's clock (through the
// monotonic reading when t has one).
// A time before the worker started (the zero time.Time, an unset
// deadline) is 0: already past, never a negative that would overflow
// nextTimeout.
func (w *worker) clockAt(t time.Time) int64 { return max(int64(t.Sub(w.epoch)), 0) }

// addClock is now+d on the worker clock, saturating: a huge d (a "park
// for ever" Sleep) is the far future, not an overflow into the past.
func addClock(now int64, d time.Duration) int64 {
	if d <= 0 {
		return now
	}
	if at := now + int64(d); at >= now {
		return at
	}
	return 1<<63 - 1
}

// nextTimeout is how long the loop may block before the earliest timer is
// due: negative when there is none.
func (w *worker) nextTimeout() time.Duration {
	if len(w.timers) == 0 {
		return -1
	}
	return max(time.Duration(w.timers[0].at-w.now()), 0)
}

// testHookTimerFire, when set by a test, runs before each timer fires.
var testHookTimerFire func()

// fireTimers runs every timer that is due. Each is a step of its own for
// the watchdog (progress): a worker with very many due at once (a burst
// of deadlines set together) spends long here, healthily.
func (w *worker) fireTimers() {
	if len(w.timers) == 0 {
		return
	}
	now := w.now()
	for len(w.timers) > 0 && w.timers[0].at <= now {
		w.progress()
		if testHookTimerFire != nil {
			testHookTimerFire()
		}
		n := w.timers.pop()
		switch n.kind {
		case tmAcceptRetry:
			w.acceptPaused = false
			w.reserveSpare()
			w.armAccept()
		case tmDrain:
			n.conn.drainExpired()
		case tmReadDeadline:
			n.conn.deadlineFired(n, n.conn.tm.rdDeadline, waitRecv)
		case tmWriteDeadline:
			n.conn.deadlineFired(n, n.conn.tm.wrDeadline, waitSend)
		case tmTLSClose:
			n.conn.tlsCloseExpired()
		case tmTask:
			n.fired = true
			if n.task != nil {
				n.task.wake(waitTimer)
			}
			if n.pooled {
				w.releaseTimer(n.asPooled(), false)
			}
		}
	}
}
