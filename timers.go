package ringline

import "time"

// The worker's timers: a binary min-heap of deadlines kept in the core, so
// both backends share one notion of time. The earliest deadline becomes
// the backend's wait timeout; arming a timer is a heap push (no syscall,
// no cgo call, no allocation once the heap has grown), and a timer that is
// no longer wanted is left in place and ignored when it fires (each kind
// checks that what it was armed for still holds).

// Timer kinds.
const (
	tmAcceptRetry uint8 = iota + 1 // re-arm the listener's accept after an error pause
	tmDrain                        // a closing connection's unsent bytes ran out of time
)

type timer struct {
	at   int64 // nanoseconds since the worker's epoch (monotonic)
	kind uint8
	idx  uint32 // connection slot, for per-connection timers
	gen  uint32 // its generation when armed
}

type timerHeap []timer

func (h *timerHeap) push(t timer) {
	*h = append(*h, t)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if s[p].at <= s[i].at {
			break
		}
		s[p], s[i] = s[i], s[p]
		i = p
	}
}

func (h *timerHeap) pop() timer {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l := 2*i + 1
		if l >= len(s) {
			break
		}
		m := l
		if r := l + 1; r < len(s) && s[r].at < s[l].at {
			m = r
		}
		if s[i].at <= s[m].at {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

// now is the worker's monotonic clock.
func (w *worker) now() int64 { return int64(time.Since(w.epoch)) }

func (w *worker) arm(kind uint8, d time.Duration, idx, gen uint32) {
	w.timers.push(timer{at: w.now() + int64(d), kind: kind, idx: idx, gen: gen})
}

// nextTimeout is how long the loop may block before the earliest timer is
// due: negative when there is none.
func (w *worker) nextTimeout() time.Duration {
	if len(w.timers) == 0 {
		return -1
	}
	return max(time.Duration(w.timers[0].at-w.now()), 0)
}

// fireTimers runs every timer that is due.
func (w *worker) fireTimers() {
	if len(w.timers) == 0 {
		return
	}
	now := w.now()
	for len(w.timers) > 0 && w.timers[0].at <= now {
		t := w.timers.pop()
		switch t.kind {
		case tmAcceptRetry:
			w.acceptPaused = false
			w.armAccept()
		case tmDrain:
			if cn := w.connAt(t.idx, t.gen); cn != nil {
				cn.drainExpired()
			}
		}
	}
}
