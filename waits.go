package ringline

import (
	"log/slog"
	"runtime"
	"runtime/metrics"
	"syscall"
	"time"
)

// waitMode follows how long a worker's blocking waits last and says when
// its way of waiting should switch, with some hysteresis: long waits
// (longer than longWaitAfter) switch it to the way for long waits when
// they outweigh the short ones between them (each long wait counts two,
// each short one takes one back, and two long waits in a row are enough),
// and eight short waits in a row switch it back (longWaitSwitch).
// Switching on every wait would leave half the waits to be taken by
// sysmon, and keep sysmon at its 20 µs period. The short waits are
// weighed rather than reset the count because an io_uring worker's long
// waits come with short ones between them (its own sends' completions).
//
// Why waits are sorted at all: a goroutine in an ordinary system call (or
// a cgo call) keeps its P, and when no other P is idle sysmon takes that
// P once the call has lasted 20 µs or so and wakes another thread for it;
// a busy loop whose waits are long pays that on most of them (40-50% of
// the server's CPU on 16 KiB forwarding with one P). Short waits (a busy
// loop, a ping-pong) wake fastest and cheapest from an ordinary blocking
// wait. For long ones an unlocked epoll worker parks in Go's netpoller,
// holding no P; a worker locked to its thread (io_uring, or epoll with
// PinCPUs), which would hand its thread over if it parked, holds its P
// instead for up to Config.HoldWait in a raw system call the scheduler
// does not see (docs/ARCHITECTURE.md, "How a worker waits").
type waitMode struct {
	long   bool          // the waits have been long
	streak int           // the weight of recent long waits (short mode), or short waits in a row (long mode)
	after  time.Duration // longWaitAfter when the backend was made
	sw     [2]int        // longWaitSwitch when the backend was made
}

func newWaitMode() waitMode { return waitMode{after: longWaitAfter, sw: longWaitSwitch} }

// record notes whether the last blocking wait was long and reports
// whether the way of waiting switches.
func (m *waitMode) record(long bool) bool {
	if !m.long {
		switch {
		case long:
			m.streak += 2
		case m.streak > 0:
			m.streak--
		}
		if m.streak < 2*m.sw[0] {
			return false
		}
	} else {
		if long {
			m.streak = 0
			return false
		}
		if m.streak++; m.streak < m.sw[1] {
			return false
		}
	}
	m.long, m.streak = !m.long, 0
	return true
}

// recordWait records a wait that lasted d.
func (m *waitMode) recordWait(d time.Duration) bool { return m.record(d > m.after) }

// longWaitAfter: a blocking wait that lasts longer counts as long. sysmon
// may take the P of a wait longer than 20 µs, but below 100 µs a loop is
// busy or in a ping-pong, where waking from an ordinary wait costs less
// than a wake-up through the netpoller (docs/BENCHMARKS.md §7.2) or a held
// wait's timer (§7.6). longWaitSwitch is how many waits in a row of the
// other kind switch the way of waiting: [short mode] long ones, [long
// mode] short ones. A backend copies both when it is made.
var (
	longWaitAfter  = 100 * time.Microsecond
	longWaitSwitch = [2]int{2, 8}
)

// kernelTimespec is the kernel's struct __kernel_timespec (epoll_pwait2,
// io_uring's EXT_ARG): two 64-bit fields on every architecture, where
// unix.Timespec has 32-bit ones on 32-bit Linux.
type kernelTimespec struct{ sec, nsec int64 }

func toKernelTimespec(d time.Duration) kernelTimespec {
	return kernelTimespec{int64(d / time.Second), int64(d % time.Second)}
}

// maxHoldWait bounds Config.HoldWait below the 10 ms after which sysmon
// preempts a goroutine that seems to run on (a longer hold would end
// there with EINTR, and the wait go on the ordinary way), and at the
// worker's 2 ms pass through the scheduler (yieldToScheduler).
const maxHoldWait = 2 * time.Millisecond

// holdLogger is a backend that logs when it turns holding off (io_uring;
// the epoll backend takes its logger directly).
type holdLogger interface{ setLog(*slog.Logger) }

// testHookHoldErrno, when set by a test, is what a held wait's system call
// returns instead of being made (0: make it).
var testHookHoldErrno func() syscall.Errno

// holdUnavailable is the log line of a worker that turns holding off
// because the kernel refused the held wait's system call (a seccomp
// profile older than epoll_pwait2 answers EPERM, a kernel before 5.11
// ENOSYS).
const holdUnavailable = "ringline: held waits unavailable; this worker waits the ordinary way from now on"

// readyCheck lets goroutines that are ready to run have the P before a
// worker holds it. A held wait looks to the scheduler like a goroutine
// that runs on, so a goroutine the worker readied just before (a task's
// channel send, the reply to a Runtime.Post) would sit in the worker's
// P's queue until the hold ended; with no other P idle, a goroutine that
// posts and waits for each reply found every hold running out (a 1.2 ms
// round trip at GOMAXPROCS=1; docs/BENCHMARKS.md §8). The scheduler's
// count of runnable goroutines (runtime/metrics, no allocation) says when
// to yield first; the io_uring backend submits what the turn staged
// before it does, so that replies do not wait. Yielding before every hold
// instead cost 13-20% of the server's CPU on 16 KiB forwarding (§7.6),
// where nothing else is ready. The count is the whole process's: in a
// process whose other Ps always have goroutines waiting, every hold
// starts with up to readyYields hand-offs, and holding gains little
// there. What the count costs: Go 1.26 computes it under the scheduler's
// lock, visiting every P (64 ns at GOMAXPROCS=1, 391 ns at 64, 1.4 µs at
// 256 on the benchmark host), and metrics.Read takes a lock of the whole
// process, so the check may wait behind another reader of runtime/metrics
// (a metrics scrape). It runs only before holds, at most once per long
// wait (over 100 µs), so that workers seldom meet there.
type readyCheck struct {
	s      [1]metrics.Sample
	yields uint64 // holds that yielded first (WorkerStats does not show them; tests count them)
}

func newReadyCheck() readyCheck {
	return readyCheck{s: [1]metrics.Sample{{Name: "/sched/goroutines/runnable:goroutines"}}}
}

// waiting reports whether some goroutine is ready to run (never, on a Go
// without the metric); the caller then yields.
func (c *readyCheck) waiting() bool {
	metrics.Read(c.s[:])
	v := c.s[0].Value
	return v.Kind() == metrics.KindUint64 && v.Uint64() > 0
}

// readyYields bounds the passes through the scheduler before one hold.
// One is not always enough: Gosched puts the worker on the global run
// queue, which the scheduler serves first once in 61 schedules, so the
// worker may run again before the goroutine it yielded to, and then hold
// the P from it for the whole hold (about 2% of Post round trips at
// GOMAXPROCS=1, traced: the goroutine's post was not yet made when those
// holds began).
const readyYields = 3

// yield passes through the scheduler, and again while goroutines are
// still ready to run, readyYields times at most (each a hand-off of the
// P to another thread and back for a locked worker).
func (c *readyCheck) yield() {
	c.yields++
	for i := 1; ; i++ {
		runtime.Gosched()
		if i == readyYields || !c.waiting() {
			return
		}
	}
}

// timeLeft is what remains of a wait of total (negative: no limit) after
// elapsed: never below 0, and still no limit for no limit.
func timeLeft(total, elapsed time.Duration) time.Duration {
	if total < 0 {
		return total
	}
	return max(total-elapsed, 0)
}
