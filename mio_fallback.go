//go:build linux

package ringline

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The epoll backend: pure Go (golang.org/x/sys/unix, no cgo), used where
// io_uring is missing, forbidden (seccomp) or compiled out. It takes the
// same staged operations as the io_uring backend and synthesises the same
// completion stream from readiness, so the core above it (connections,
// tasks, accumulator, send ordering, close rules) is shared:
//
//   - opAcceptMulti: watch the listener; on readiness accept4 in a loop, one
//     completion per socket with cqeFMore; any error ends it (no MORE).
//   - the wake eventfd: drained on readiness, reported as a udWake
//     completion.
//   - opRecvMulti: on readiness read into a free pooled buffer and complete
//     with res = n, flags = cqeFBuffer | bid<<16 | cqeFMore; EOF is res 0,
//     an error -errno, no free buffer -ENOBUFS, all three without MORE.
//   - opSend, opSendmsg: written at enter time (send(2) / sendmsg(2) with
//     MSG_DONTWAIT|MSG_NOSIGNAL, like io_uring's MSG_NOSIGNAL); on EAGAIN
//     the send waits for writability and completes later with the bytes
//     written (a short write completes short: the core resubmits the rest).
//   - opCancel: the target completes with -ECANCELED and the cancel with 0,
//     or the cancel with -ENOENT.
//   - opClose, opShutdown, opNop: done at once. opRead, opConnect and
//     opTimeout wait for readiness or the deadline; all three can be
//     cancelled. opFLink: a failed op cancels the rest of its chain, and a
//     chain waits for an op that went asynchronous.
//   - opLinkTimeout right behind a linked op: a timer armed with that op.
//     If the op completes first the timer is dropped and completes with
//     -ECANCELED; if the timer fires first it completes with -ETIME and
//     the op is cancelled (-ECANCELED), as io_uring's linked timeouts do.
//
// Readiness is edge-triggered (epollEdgeTriggered). A socket is added once
// with EPOLLIN|EPOLLRDHUP|EPOLLET, plus EPOLLOUT the first time a send or
// connect has to wait (then kept), and never touched again; the backend
// remembers readability and writability until a short read or write or
// EAGAIN says otherwise. Level-triggered mode (kept for measurement, and
// tested) registers exactly what armed ops wait for, syncing the interest
// set lazily before each epoll_wait, so an op disarmed and re-armed within
// one turn (ENOBUFS park, pause) costs nothing; but every send that waits
// for write space costs two epoll_ctl calls.
//
// Measured with BenchmarkEpollTrigger (2 vCPU, Linux 6.18, median of 5,
// backend syscalls per message including epoll_wait; epoll_ctl per message;
// process CPU ns per message):
//
//	load                          edge                  level
//	pipelined 64 B x16            0.145 / 0.0008 / 1.5k 0.177 / 0.0008 / 1.9k
//	ping-pong 64 B                2.58  / 0.0008 / 31k  2.47  / 0.0008 / 25k
//	bulk 256 KiB                  17.5  / 0.0002 / 190k 17.4  / 0.0002 / 229k
//	4 buffers, 32 conns           2.13  / 0.0016 / 20k  2.04  / 0.0016 / 28k
//	slow reader (sends wait)      16.4  / 0.0008 / 652k 24.2  / 2.78   / 768k
//	churn (1 msg per connection)  8.48  / 1.0    / 149k 8.63  / 1.0    / 144k
//
// The modes tie (within run-to-run noise) except where sends wait for
// write space, where level triggering makes ~50% more syscalls; so edge.

// epollBuilt reports whether the epoll backend is compiled in.
const epollBuilt = true

// epollEdgeTriggered picks the readiness mode of backends created from now
// on. Edge-triggered is the measured choice (above); tests and
// BenchmarkEpollTrigger flip it to run level-triggered mode.
var epollEdgeTriggered = true

const (
	epRecvBudget   = 16  // buffers read per socket per turn before others get theirs
	epAcceptBudget = 64  // accepts per listener per turn
	epEvents       = 256 // readiness events taken per epoll_wait
	// epRecvSpan is how many provided buffers one recvmsg may fill once
	// a read has filled its buffer: large transfers then take a quarter
	// of the syscalls (64 KiB per call with 16 KiB buffers, what a C
	// server reading into a 64 KiB buffer makes), while small messages
	// keep a plain recv into one buffer.
	epRecvSpan = 4
)

// epPend is one operation waiting on a socket.
type epPend struct {
	ud    uint64
	addr  uint64
	len   uint32
	code  uint8
	armed bool
}

// epFile is the backend's view of one file descriptor.
type epFile struct {
	reg uint32 // events registered with epoll; 0: not in the set
	// Readiness remembered between edges (edge-triggered), or reported by
	// the current event (level-triggered).
	readable, writable bool
	hup                bool // peer hung up or error: read until 0/error, not just a short read
	queued, dirty      bool // on the ready / dirty list
	// outWatch (edge-triggered): EPOLLOUT is in the interest set. It is
	// added when a send or connect first has to wait and then kept, so a
	// socket that never fills its send buffer never reports writability.
	outWatch bool
	// filled: the last read filled everything it offered, so the next
	// reads span several buffers (epRecvSpan).
	filled bool
	// pacing: whether the kernel paces the socket itself (paced): 0
	// not known yet, 1 it does, -1 it does not.
	pacing int8

	ops [epSlots]epPend // by slot: pAccept, pRecv, pRead, pSend, pConn
}

// Slots of epFile.ops: at most one op of each kind waits on a socket.
const (
	pAccept = iota
	pRecv
	pRead
	pSend
	pConn
	epSlots
)

func (f *epFile) anyArmed() bool {
	for k := range f.ops {
		if f.ops[k].armed {
			return true
		}
	}
	return false
}

type epTimer struct {
	at int64 // deadline, nanoseconds since the backend's t0
	ud uint64
	// target is the op a linked timeout bounds (0: a plain timeout).
	target uint64
}

// epChain is the rest of a link chain waiting for an asynchronous op.
type epChain struct {
	after uint64
	ops   []sqOp
}

// epollBackend is one worker's epoll backend. Like the io_uring backend it
// is driven only from the worker's goroutine, except wake, which any
// goroutine may call.
type epollBackend struct {
	epfd   int
	wakeFd int
	edge   bool

	staged []sqOp
	out    []cqEntry
	events []unix.EpollEvent
	ev     unix.EpollEvent // epoll_ctl argument, kept here so it never escapes per call

	files  []epFile  // indexed by fd
	ready  []int32   // fds to service without waiting for an event (edge-triggered)
	ready2 []int32   // the list being serviced
	dirty  []int32   // fds whose epoll interest may differ from what is registered
	byIdx  []int32   // connection index (from user_data) -> fd, to find a cancel's target
	accFds []int32   // listeners an accept was armed on
	timers []epTimer // min-heap by deadline
	chains []epChain
	// linked maps the target of each armed linked timeout to the
	// timeout's place in timers (kept as the heap moves it), so a
	// completion finds and removes its timeout without scanning: with
	// many connects in flight a scan was a cost per completion growing
	// with them (BenchmarkEpollLinkedTimeout).
	linked map[uint64]int

	bufMem   region
	bufSize  uint32
	bufCount uint32
	free     []uint16 // buffer ids not handed out
	// The recvmsg that reads into several buffers at once.
	rmsg unix.Msghdr
	riov [epRecvSpan]unix.Iovec
	// The sendmsg of one chunk of a larger send (sendChunks).
	siov []iovec
	smsg msghdr
	// sendChunkMax is epSendChunks (tests lower it).
	sendChunkMax int
	// hold is Config.HoldWait (0: off); holdTS is holdWait's timeout,
	// kept here so that it does not escape per call. nHeld and
	// nHoldTimeouts count held waits and those that timed out.
	hold                 time.Duration
	holdTS               kernelTimespec
	nHeld, nHoldTimeouts uint64

	skipped bool // the last enter returned completions without polling
	// An epoll worker whose goroutine is not locked to its thread may
	// park in Go's netpoller while its waits are long (waitAdaptive):
	// canPark says it may, mode.long that it does (a worker that may not
	// park holds instead: waitHeld), park is then the dup of epfd
	// registered in the netpoller. parkN, parkErr and parkWaited carry
	// parkCheck's results; parkCap is epParkCap as it was when the
	// backend was made.
	canPark    bool
	mode       waitMode
	runnable   readyCheck
	park       *os.File
	parkRC     syscall.RawConn
	parkFn     func(uintptr) bool // parkCheck, bound once
	parkWaited bool
	parkN      int
	parkErr    error
	parks      uint64 // waits that parked
	// parkAgain: the park renews one that reached parkCap (parkWait),
	// so it is not another wait or park in the counts.
	parkAgain    bool
	parksRenewed uint64 // parks renewed at parkCap (tests)
	parkCap      time.Duration
	log          *slog.Logger
	t0           time.Time
	nWait        uint64 // epoll_wait calls
	nSys         uint64 // every other syscall this backend made
	nCtl         uint64 // of which epoll_ctl
	// sysPub is nWait+nSys as of the end of the last enter, readable from
	// any goroutine (benchmarks report syscalls per message from it).
	sysPub, ctlPub atomic.Uint64
}

func newEpoll(bc backendConfig) (backend, error) {
	b, err := newEpollBackend(bc, epollEdgeTriggered)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func newEpollBackend(bc backendConfig, edge bool) (_ *epollBackend, err error) {
	b := &epollBackend{epfd: -1, wakeFd: -1, edge: edge, bufSize: bc.bufSize, bufCount: bc.bufCount, t0: time.Now(),
		mode: newWaitMode(), runnable: newReadyCheck(), parkCap: epParkCap, sendChunkMax: epSendChunks, hold: bc.hold}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("ringline: epoll_create1: %w", err)
	}
	b.epfd = fd
	if fd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("ringline: eventfd: %w", err)
	}
	b.wakeFd = fd
	b.ev = unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_ADD, fd, &b.ev); err != nil {
		return nil, fmt.Errorf("ringline: epoll_ctl wake eventfd: %w", err)
	}
	if b.bufMem, err = mapRegion(int(bc.bufCount) * int(bc.bufSize)); err != nil {
		return nil, err
	}
	b.free = make([]uint16, bc.bufCount)
	for i := range b.free {
		b.free[i] = uint16(int(bc.bufCount) - 1 - i)
	}
	b.events = make([]unix.EpollEvent, epEvents)
	b.staged = make([]sqOp, 0, max(bc.ringEntries, 16))
	b.out = make([]cqEntry, 0, 256)
	b.files = make([]epFile, 256)
	return b, nil
}

func (b *epollBackend) kind() Backend { return Epoll }

func (b *epollBackend) stage(op sqOp) { b.staged = append(b.staged, op) }

// enter applies the staged ops, services sockets left ready by the last
// turn, then polls epoll and turns readiness into completions. It blocks
// only when wait is set and nothing is pending. When applying the ops
// already produced completions it returns them without polling, but never
// twice in a row, so other sockets are not starved.
func (b *epollBackend) enter(wait bool, timeout time.Duration) ([]cqEntry, error) {
	b.out = b.out[:0]
	if len(b.staged) > 0 {
		b.applyOps(b.staged)
		clear(b.staged)
		b.staged = b.staged[:0]
	}
	b.runReady()
	if len(b.out) > 0 && !b.skipped {
		b.skipped = true
	} else {
		b.skipped = false
		if err := b.poll(wait && len(b.out) == 0 && len(b.ready) == 0, timeout); err != nil {
			b.publish()
			return b.out, err
		}
	}
	b.expireTimers()
	b.publish()
	return b.out, nil
}

func (b *epollBackend) publish() {
	b.sysPub.Store(b.nWait + b.nSys)
	b.ctlPub.Store(b.nCtl)
}

func (b *epollBackend) poll(block bool, timeout time.Duration) error {
	b.syncInterest()
	wait := time.Duration(0) // how long to wait; negative: until an event
	if block {
		wait = timeout
		if len(b.timers) > 0 {
			if d := time.Duration(max(b.timers[0].at-b.now(), 0)); wait < 0 || d < wait {
				wait = d
			}
		}
	}
	var n int
	var err error
	blocks := waitMillis(wait) != 0
	switch {
	case blocks && b.canPark:
		n, err = b.waitAdaptive(wait)
	case blocks && b.hold > 0:
		n, err = b.waitHeld(wait)
	default:
		n, err = b.waitFor(wait)
	}
	if err != nil {
		return fmt.Errorf("ringline: epoll_wait: %w", err)
	}
	b.onEvents(n)
	return nil
}

// waitMillis is epoll_wait's timeout for a wait of d (negative: -1, no
// limit).
func waitMillis(d time.Duration) int {
	if d < 0 {
		return -1
	}
	return durMillis(d)
}

// waitFor is a blocking epoll_wait of up to wait (negative: no limit).
// A signal ends epoll_wait with EINTR whatever SA_RESTART says
// (signal(7)), and the runtime signals threads to preempt goroutines
// (SIGURG), the more often the busier the process. A signal is none of
// the things enter waits for, so the wait goes on for the time it has
// left: returned, it would be an empty turn of the loop, and a timed
// wait cut short would be counted short (waitMode).
func (b *epollBackend) waitFor(wait time.Duration) (int, error) {
	var end int64
	if wait > 0 {
		end = b.now() + int64(wait) // not for a look without waiting: no clock read
	}
	for {
		b.nWait++
		n, err := unix.EpollWait(b.epfd, b.events, waitMillis(wait))
		if err != unix.EINTR {
			return n, err
		}
		if wait >= 0 {
			if wait = time.Duration(end - b.now()); wait <= 0 {
				return 0, nil
			}
		}
	}
}

// waitAdaptive is a blocking epoll_wait of a worker that may park
// (parkWait). A loop whose blocking waits are short (a ping-pong, a busy server)
// blocks in epoll_wait: the cheapest wake-up. One whose waits are long
// parks in the netpoller: a thread blocked in a syscall keeps its P, and
// when no other P is idle (GOMAXPROCS no larger than the busy workers)
// sysmon takes that P after 20 µs and wakes another thread for it, and
// stays at its 20 µs period while that keeps succeeding; on 16 KiB echo
// that cost 40-55% of the server's CPU. A parked goroutine leaves its P
// idle, and sysmon backs off (waitMode).
func (b *epollBackend) waitAdaptive(wait time.Duration) (n int, err error) {
	t0 := b.now()
	if b.park == nil {
		n, err = b.waitFor(wait)
	} else {
		n, err = b.parkWait(waitMillis(wait))
	}
	if !b.canPark {
		return n, err // parkWait gave up parking
	}
	if b.mode.recordWait(time.Duration(b.now() - t0)) {
		if b.mode.long {
			b.startParking()
		} else {
			b.stopParking()
		}
	}
	return n, err
}

// waitHeld is a blocking epoll_wait of a worker that may not park (it is
// locked to its thread: PinCPUs) while its waits are long (waitMode): it
// holds its P for the first Config.HoldWait of the wait (holdWait), and
// waits the ordinary way only past that, for the time left. Its short
// waits are ordinary ones: a hold's timer costs more than the wait would
// lose.
func (b *epollBackend) waitHeld(wait time.Duration) (n int, err error) {
	t0 := b.now()
	held := false
	if b.mode.long {
		left := wait
		if b.runnable.waiting() {
			b.runnable.yield() // goroutines ready to run go first (readyCheck)
			left = timeLeft(wait, time.Duration(b.now()-t0))
		}
		n, held, err = b.holdWait(left)
	}
	if !held {
		n, err = b.waitFor(timeLeft(wait, time.Duration(b.now()-t0)))
	}
	b.mode.recordWait(time.Duration(b.now() - t0))
	return n, err
}

// holdWait is the first part of a held wait (Config.HoldWait): a raw
// epoll_pwait2 of at most b.hold, which leaves the goroutine running as
// far as the scheduler can tell, so sysmon does not take the P and wake
// another thread for it. It reports done when the wait is over: events
// came, or wait (negative: no limit) was no longer than the hold.
// Otherwise (the hold ran out, or a signal cut it short) the caller waits
// the ordinary way for the rest. Not holding again after a signal: the
// runtime's preemption signal comes back while the goroutine seems to
// run on, and a hold renewed after each would keep the P for the whole
// wait. A kernel without epoll_pwait2 (before 5.11) turns holding off
// for the backend.
func (b *epollBackend) holdWait(wait time.Duration) (n int, done bool, err error) {
	d := b.hold
	whole := wait >= 0 && wait <= d
	if whole {
		d = wait
	}
	b.holdTS = toKernelTimespec(d)
	var r uintptr
	var e syscall.Errno
	if testHookHoldErrno != nil {
		e = testHookHoldErrno()
	}
	if e == 0 {
		r, _, e = unix.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(b.epfd), uintptr(unsafe.Pointer(&b.events[0])),
			uintptr(len(b.events)), uintptr(unsafe.Pointer(&b.holdTS)), 0, 0)
	}
	if e != 0 && e != unix.EINTR {
		// The kernel or a seccomp profile refuses epoll_pwait2 (ENOSYS
		// before 5.11; EPERM from profiles older than it): wait the
		// ordinary way from now on.
		b.hold = 0
		if b.log != nil {
			b.log.Warn(holdUnavailable, "err", fmt.Errorf("epoll_pwait2: %w", e))
		}
		return 0, false, nil
	}
	b.nWait++
	b.nHeld++
	switch {
	case e != 0:
		return 0, false, nil // EINTR
	case r > 0 || whole:
		return int(r), true, nil
	}
	b.nHoldTimeouts++
	return 0, false, nil
}

// epParkCap bounds one park: a wake-up the kernel failed to pass from the
// epoll set to the netpoller (nested epoll has had such bugs) then costs
// at most this much latency, not a hung worker. A backend copies it.
var epParkCap = time.Second

// rawWait is a non-blocking epoll_wait made as a raw syscall (the
// scheduler sees no thread in a syscall). The caller counts it.
func (b *epollBackend) rawWait() (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(b.epfd), uintptr(unsafe.Pointer(&b.events[0])), uintptr(len(b.events)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// startParking registers a non-blocking dup of epfd in Go's netpoller
// (readable while the epoll set has events) for parkWait. The dup stays
// registered while the worker parks (from two long waits until eight
// short ones), not longer: registered, every event of the worker's
// sockets would also wake a thread blocked in the netpoller. Out of
// descriptors, the worker blocks and tries again at the next switch; any
// other failure makes it block in epoll_wait from then on.
func (b *epollBackend) startParking() {
	// F_DUPFD_CLOEXEC: no window in which a child started by os/exec
	// inherits it.
	fd, err := unix.FcntlInt(uintptr(b.epfd), unix.F_DUPFD_CLOEXEC, 0)
	b.nSys++
	if err != nil {
		if err == unix.EMFILE || err == unix.ENFILE {
			b.mode.long, b.mode.streak = false, 0
			return
		}
		b.giveUpParking("dup", err)
		return
	}
	// The dup shares its open file description with epfd, which becomes
	// non-blocking too: harmless, epoll_wait takes its own timeout.
	b.nSys += 4 // F_GETFL, F_SETFL, os.NewFile's F_GETFL, epoll_ctl
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		b.giveUpParking("set non-blocking", err)
		return
	}
	f := os.NewFile(uintptr(fd), "ringline-epoll")
	rc, err := f.SyscallConn()
	if err == nil {
		// os.NewFile does not say whether the netpoller took the fd; a
		// file it did not take refuses deadlines.
		err = f.SetReadDeadline(time.Time{})
	}
	if err != nil {
		f.Close()
		b.giveUpParking("register", err)
		return
	}
	b.park, b.parkRC = f, rc
	if b.parkFn == nil {
		b.parkFn = b.parkCheck
	}
}

// stopParking takes the dup out of the netpoller and closes it.
func (b *epollBackend) stopParking() {
	if b.park != nil {
		_ = b.park.Close()
		b.park, b.parkRC = nil, nil
		b.nSys += 2 // epoll_ctl, close
	}
}

// giveUpParking makes the worker block in epoll_wait from now on, and
// says why.
func (b *epollBackend) giveUpParking(what string, err error) {
	b.stopParking()
	b.canPark, b.mode.long, b.mode.streak = false, false, 0
	if b.log != nil {
		b.log.Warn("ringline: epoll worker cannot park in the netpoller; it blocks in epoll_wait from now on", "what", what, "err", err)
	}
}

// parkCheck is RawConn.Read's callback in parkWait. Each call looks at the
// epoll set without blocking; the first that finds nothing asks the
// netpoller to wait, and the one after the wait ends it whatever it
// finds. The look must be made here, not before Read: Read first resets
// the readiness the netpoller has recorded, so events that came between
// an earlier look and that reset would never wake the park.
func (b *epollBackend) parkCheck(uintptr) bool {
	if b.parkWaited || b.parkAgain {
		b.nSys++ // the look after a park, or before a renewed one; the wait counts once
	} else {
		b.nWait++
	}
	b.parkN, b.parkErr = b.rawWait()
	if b.parkN != 0 || b.parkErr != nil || b.parkWaited {
		return true
	}
	b.parkWaited = true
	if b.parkAgain {
		b.parksRenewed++
	} else {
		b.parks++
	}
	return false
}

// parkWait parks the goroutine until the epoll set has events or ms
// milliseconds have passed (ms < 0: no limit), and returns the events
// taken (in b.events) as EpollWait would. One park lasts at most
// parkCap; one that reaches it with nothing to report parks again, so an
// idle worker makes no loop iterations (which would wake the watchdog).
func (b *epollBackend) parkWait(ms int) (int, error) {
	var until time.Time // the caller's deadline; zero: none
	if ms >= 0 {
		until = time.Now().Add(time.Duration(ms) * time.Millisecond)
	}
	b.parkAgain = false
	for {
		d := b.parkCap
		if !until.IsZero() {
			d = min(d, time.Until(until))
		}
		if err := b.park.SetReadDeadline(time.Now().Add(d)); err != nil {
			b.giveUpParking("set deadline", err)
			left := time.Duration(-1)
			if !until.IsZero() {
				left = max(time.Until(until), 0)
			}
			return b.waitFor(left)
		}
		b.parkN, b.parkErr, b.parkWaited = 0, nil, false
		if testHookBeforePark != nil {
			testHookBeforePark(b)
		}
		err := b.parkRC.Read(b.parkFn)
		if err == nil {
			return b.parkN, b.parkErr
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			// Not a deadline: the netpoller refuses this file. Block in
			// epoll_wait from now on rather than spin.
			b.giveUpParking("wait", err)
		}
		// Read returns at a deadline without a last call: look once more.
		b.nSys++
		n, werr := b.rawWait()
		if n != 0 || werr != nil || !b.canPark || (!until.IsZero() && time.Until(until) <= 0) {
			return n, werr
		}
		// The cap ended the park, not the caller's time, and the look
		// found nothing: the wake-up it guards against was not lost.
		b.parkAgain = true
	}
}

// testHookBeforePark, when set by a test, runs just before a park begins.
var testHookBeforePark func(b *epollBackend)

func (b *epollBackend) onEvents(n int) {
	for i := 0; i < n; i++ {
		b.onEvent(b.events[i].Fd, b.events[i].Events)
	}
}

// durMillis rounds up, so a timer never fires early.
func durMillis(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms > 1<<30 {
		ms = 1 << 30
	}
	return int(ms)
}

func (b *epollBackend) now() int64 { return int64(time.Since(b.t0)) }

func (b *epollBackend) onEvent(fd int32, ev uint32) {
	if fd == int32(b.wakeFd) {
		// Consume the eventfd, then report the wake; the core clears its
		// pending flag only on seeing the completion, after the eventfd is
		// drained, so a wake made in between is never swallowed.
		var v [8]byte
		b.nSys++
		_, _ = unix.Read(b.wakeFd, v[:])
		b.emit(packUD(udWake, 0, 0, 0), 0, 0)
		return
	}
	if fd < 0 || int(fd) >= len(b.files) || b.files[fd].reg == 0 {
		return // an fd dropped since the event was queued
	}
	f := &b.files[fd]
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		f.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		f.hup = true
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		f.writable = true
	}
	b.service(fd)
	if !b.edge {
		f = &b.files[fd]
		f.readable, f.writable = false, false
	}
}

// service runs the ops waiting on fd as far as its readiness allows.
// Servicing may grow b.files, so entries are re-fetched after each step.
func (b *epollBackend) service(fd int32) {
	f := &b.files[fd]
	if f.writable && f.ops[pConn].armed {
		b.doConnect(fd)
		f = &b.files[fd]
	}
	if f.writable && f.ops[pSend].armed {
		b.doSend(fd)
		f = &b.files[fd]
	}
	if f.readable && f.ops[pAccept].armed {
		b.doAccept(fd)
		f = &b.files[fd]
	}
	if f.readable && f.ops[pRead].armed {
		b.doRead(fd)
		f = &b.files[fd]
	}
	if f.readable && f.ops[pRecv].armed {
		b.doRecv(fd)
	}
}

func (b *epollBackend) queue(fd int32) {
	if f := &b.files[fd]; !f.queued {
		f.queued = true
		b.ready = append(b.ready, fd)
	}
}

func (b *epollBackend) runReady() {
	if len(b.ready) == 0 {
		return
	}
	b.ready, b.ready2 = b.ready2[:0], b.ready
	for _, fd := range b.ready2 {
		if int(fd) < len(b.files) {
			b.files[fd].queued = false
			b.service(fd)
		}
	}
}

// file returns fd's entry, growing the table when fd is new to it.
func (b *epollBackend) file(fd int32) *epFile {
	if int(fd) >= len(b.files) {
		nf := make([]epFile, max(2*len(b.files), int(fd)+1))
		copy(nf, b.files)
		b.files = nf
	}
	return &b.files[fd]
}

// resetFile starts a fresh entry for a new socket on fd. Ops still armed
// on a previous socket with that number (closed behind the backend's back)
// complete with -ECANCELED so the core's counts stay right.
func (b *epollBackend) resetFile(fd int32) {
	b.dropOps(fd)
	*b.file(fd) = epFile{writable: b.edge}
}

func (b *epollBackend) dropOps(fd int32) { b.failOps(fd, -int32(unix.ECANCELED)) }

// failOps ends every op waiting on fd with res. Entries are re-fetched
// each time: a completion may run a link chain that grows b.files.
func (b *epollBackend) failOps(fd int32, res int32) {
	for k := 0; k < epSlots; k++ {
		if fd < 0 || int(fd) >= len(b.files) {
			return
		}
		if p := &b.files[fd].ops[k]; p.armed {
			b.finish(fd, p, res)
		}
	}
}

// want is the epoll interest fd needs now. Edge-triggered: input from the
// first armed op on, output from the first send or connect that waited,
// both for as long as the socket lives. Level-triggered: exactly what armed
// ops wait for, so an idle or parked socket never reports.
func (b *epollBackend) want(f *epFile) uint32 {
	if b.edge {
		var ev uint32
		if f.reg != 0 || f.anyArmed() {
			ev = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET
		}
		if f.outWatch {
			ev |= unix.EPOLLOUT
		}
		return ev
	}
	var ev uint32
	if f.ops[pAccept].armed || f.ops[pRecv].armed || f.ops[pRead].armed {
		ev |= unix.EPOLLIN
	}
	if f.ops[pSend].armed || f.ops[pConn].armed {
		ev |= unix.EPOLLOUT
	}
	return ev
}

// touch notes that fd's interest may have changed; syncInterest applies it
// before the next epoll_wait, so an op armed and cancelled in one turn
// costs no epoll_ctl.
func (b *epollBackend) touch(fd int32) {
	f := &b.files[fd]
	if !f.dirty && b.want(f) != f.reg {
		f.dirty = true
		b.dirty = append(b.dirty, fd)
	}
}

func (b *epollBackend) syncInterest() {
	for i := 0; i < len(b.dirty); i++ {
		fd := b.dirty[i]
		f := &b.files[fd]
		f.dirty = false
		want := b.want(f)
		if want == f.reg {
			continue
		}
		op := unix.EPOLL_CTL_MOD
		if f.reg == 0 {
			op = unix.EPOLL_CTL_ADD
		} else if want == 0 {
			op = unix.EPOLL_CTL_DEL
		}
		b.ev = unix.EpollEvent{Events: want, Fd: fd}
		b.nSys++
		b.nCtl++
		err := unix.EpollCtl(b.epfd, op, int(fd), &b.ev)
		if err == unix.EEXIST {
			b.nSys++
			b.nCtl++
			err = unix.EpollCtl(b.epfd, unix.EPOLL_CTL_MOD, int(fd), &b.ev)
		}
		switch {
		case err == nil:
			f.reg = want
		case op == unix.EPOLL_CTL_DEL:
			f.reg = 0 // already gone with its file
		default:
			// The fd cannot be watched (closed behind our back): fail its
			// ops rather than leave them waiting forever.
			f.reg = 0
			b.failOps(fd, -errnoOf(err))
		}
	}
	clear(b.dirty)
	b.dirty = b.dirty[:0]
}

func (b *epollBackend) emit(ud uint64, res int32, flags uint32) {
	b.out = append(b.out, cqEntry{ud: ud, res: res, flags: flags})
}

// complete emits the final completion of an op and runs or cancels the
// rest of a link chain waiting for it.
func (b *epollBackend) complete(ud uint64, res int32) {
	b.emit(ud, res, 0)
	if len(b.linked) > 0 {
		b.disarmLinked(ud)
	}
	if len(b.chains) == 0 {
		return
	}
	for i := range b.chains {
		if b.chains[i].after != ud {
			continue
		}
		ops := b.chains[i].ops
		b.chains = append(b.chains[:i], b.chains[i+1:]...)
		if res < 0 {
			for _, op := range ops {
				b.emit(op.ud, -int32(unix.ECANCELED), 0)
			}
		} else {
			b.applyOps(ops)
		}
		return
	}
}

// finish ends the op p waiting on fd with res.
func (b *epollBackend) finish(fd int32, p *epPend, res int32) {
	ud := p.ud
	p.armed = false
	b.touch(fd)
	b.complete(ud, res)
}

// index records where an armed op lives so a cancel can find it.
func (b *epollBackend) index(ud uint64, fd int32) {
	if udKind(ud) == udAccept {
		for _, x := range b.accFds {
			if x == fd {
				return
			}
		}
		b.accFds = append(b.accFds, fd)
		return
	}
	idx := int(udIdx(ud))
	if idx >= len(b.byIdx) {
		b.byIdx = append(b.byIdx, make([]int32, max(idx+1, 2*len(b.byIdx))-len(b.byIdx))...)
	}
	b.byIdx[idx] = fd
}

func (b *epollBackend) lookup(ud uint64) (int32, *epPend) {
	check := func(fd int32) *epPend {
		if fd < 0 || int(fd) >= len(b.files) {
			return nil
		}
		f := &b.files[fd]
		for k := range f.ops {
			if p := &f.ops[k]; p.armed && p.ud == ud {
				return p
			}
		}
		return nil
	}
	if udKind(ud) == udAccept {
		for _, fd := range b.accFds {
			if p := check(fd); p != nil {
				return fd, p
			}
		}
		return -1, nil
	}
	if idx := int(udIdx(ud)); idx < len(b.byIdx) {
		if p := check(b.byIdx[idx]); p != nil {
			return b.byIdx[idx], p
		}
	}
	return -1, nil
}

// applyOps applies staged ops in order, honouring opFLink: when a linked
// op fails the rest of its chain completes with -ECANCELED, and when it
// goes asynchronous the rest waits for its completion. A linked timeout
// is armed together with the op it follows.
func (b *epollBackend) applyOps(ops []sqOp) {
	for i := 0; i < len(ops); i++ {
		op := &ops[i]
		if op.code == opLinkTimeout {
			// Not behind a linked op: io_uring refuses it the same way.
			b.done(op.ud, -int32(unix.EINVAL))
			continue
		}
		start, linked := i+1, op.flags&opFLink != 0
		if linked && start < len(ops) && ops[start].code == opLinkTimeout {
			// Armed before the op runs, so an op that completes at once
			// finds it and cancels it.
			lt := &ops[start]
			b.armLinked(lt, op.ud)
			start, linked = start+1, lt.flags&opFLink != 0
		}
		pending, res := b.apply(op)
		i = start - 1
		if !linked {
			continue
		}
		j := start
		for j < len(ops) && ops[j-1].flags&opFLink != 0 {
			j++
		}
		if j == start {
			continue
		}
		switch {
		case pending:
			b.chains = append(b.chains, epChain{after: op.ud, ops: append([]sqOp(nil), ops[start:j]...)})
			i = j - 1
		case res < 0:
			for k := start; k < j; k++ {
				b.emit(ops[k].ud, -int32(unix.ECANCELED), 0)
			}
			i = j - 1
		}
	}
}

// armLinked arms the linked timeout lt on the op target.
func (b *epollBackend) armLinked(lt *sqOp, target uint64) {
	ts := (*[2]int64)(rawPtr(lt.addr))
	if b.linked == nil {
		b.linked = make(map[uint64]int)
	}
	b.pushTimer(epTimer{at: b.now() + ts[0]*int64(time.Second) + ts[1], ud: lt.ud, target: target})
}

// disarmLinked drops the linked timeout of target, which has completed:
// the timeout completes with -ECANCELED.
func (b *epollBackend) disarmLinked(target uint64) {
	i, ok := b.linked[target]
	if !ok {
		return
	}
	delete(b.linked, target)
	ud := b.timers[i].ud
	b.removeTimer(i)
	b.complete(ud, -int32(unix.ECANCELED))
}

// apply starts one op. It reports whether the op is still pending, and
// otherwise its result (already emitted).
func (b *epollBackend) apply(op *sqOp) (pending bool, res int32) {
	fd := op.fd
	switch op.code {
	case opNop:
		return b.done(op.ud, 0)
	case opAcceptMulti, opRecvMulti, opRead:
		if fd < 0 {
			return b.done(op.ud, -int32(unix.EBADF))
		}
		f := b.file(fd)
		p := &f.ops[pRecv]
		switch op.code {
		case opAcceptMulti:
			p = &f.ops[pAccept]
		case opRead:
			p = &f.ops[pRead]
		}
		if p.armed {
			return b.done(op.ud, -int32(unix.EBUSY))
		}
		if op.code == opAcceptMulti {
			// accept4(2) has no MSG_DONTWAIT: the listener itself must
			// not block (io_uring copes with blocking listeners, so the
			// core may hand one over).
			if res := b.ensureNonblock(fd); res < 0 {
				return b.done(op.ud, res)
			}
			f = &b.files[fd]
			p = &f.ops[pAccept]
		}
		*p = epPend{ud: op.ud, addr: op.addr, len: op.len, code: op.code, armed: true}
		b.index(op.ud, fd)
		b.touch(fd)
		if f.readable {
			b.queue(fd)
		}
		return true, 0
	case opSend, opSendmsg:
		if fd < 0 {
			return b.done(op.ud, -int32(unix.EBADF))
		}
		f := b.file(fd)
		if f.ops[pSend].armed {
			return b.done(op.ud, -int32(unix.EBUSY))
		}
		f.ops[pSend] = epPend{ud: op.ud, addr: op.addr, len: op.len, code: op.code, armed: true}
		if b.edge && !f.writable {
			// Known full: wait for the edge instead of a write that
			// would return EAGAIN.
			f.outWatch = true
			b.index(op.ud, fd)
			b.touch(fd)
			return true, 0
		}
		return b.doSend(fd)
	case opConnect:
		return b.startConnect(op)
	case opCancel:
		return b.cancel(op)
	case opClose:
		b.dropOps(fd)
		if fd >= 0 && int(fd) < len(b.files) {
			b.files[fd] = epFile{} // close(2) takes the fd out of the epoll set
		}
		b.nSys++
		if err := unix.Close(int(fd)); err != nil {
			return b.done(op.ud, -errnoOf(err))
		}
		return b.done(op.ud, 0)
	case opShutdown:
		b.nSys++
		if err := unix.Shutdown(int(fd), int(op.aux)); err != nil {
			return b.done(op.ud, -errnoOf(err))
		}
		return b.done(op.ud, 0)
	case opTimeout:
		ts := (*[2]int64)(rawPtr(op.addr))
		b.pushTimer(epTimer{at: b.now() + ts[0]*int64(time.Second) + ts[1], ud: op.ud})
		return true, 0
	case opFilesUpdate, opCloseDirect:
		// There is no fixed-file table on epoll: fixedFiles() is false,
		// so attach never stages these.
		return b.done(op.ud, -int32(unix.EOPNOTSUPP))
	}
	return b.done(op.ud, -int32(unix.EINVAL))
}

func (b *epollBackend) done(ud uint64, res int32) (bool, int32) {
	b.complete(ud, res)
	return false, res
}

func errnoOf(err error) int32 {
	if e, ok := err.(syscall.Errno); ok {
		return int32(e)
	}
	return int32(unix.EIO)
}

// rawPtr turns an address the core staged (memory outside the Go heap: the
// send pool, the iov area, timespecs and sockaddrs) into a pointer.
func rawPtr(addr uint64) unsafe.Pointer { return unsafe.Add(unsafe.Pointer(nil), uintptr(addr)) }

// cancel finds the target by user_data among armed ops, timers and held
// link chains.
func (b *epollBackend) cancel(op *sqOp) (bool, int32) {
	if b.cancelTarget(op.addr) {
		return b.done(op.ud, 0)
	}
	return b.done(op.ud, -int32(unix.ENOENT))
}

// cancelTarget completes the op target with -ECANCELED wherever it waits
// and reports whether it found it.
func (b *epollBackend) cancelTarget(target uint64) bool {
	if fd, p := b.lookup(target); p != nil {
		b.finish(fd, p, -int32(unix.ECANCELED))
		return true
	}
	for i := range b.timers {
		if b.timers[i].ud == target {
			if lt := b.timers[i].target; lt != 0 {
				delete(b.linked, lt) // its op runs on without a timeout
			}
			b.removeTimer(i)
			b.complete(target, -int32(unix.ECANCELED))
			return true
		}
	}
	for i := range b.chains {
		c := &b.chains[i]
		for k := range c.ops {
			if c.ops[k].ud != target {
				continue
			}
			// It and everything linked behind it never run.
			for _, o := range c.ops[k:] {
				b.emit(o.ud, -int32(unix.ECANCELED), 0)
			}
			if c.ops = c.ops[:k]; len(c.ops) == 0 {
				b.chains = append(b.chains[:i], b.chains[i+1:]...)
			}
			return true
		}
	}
	return false
}

func (b *epollBackend) doAccept(fd int32) {
	for n := 0; n < epAcceptBudget; n++ {
		f := &b.files[fd]
		if !f.ops[pAccept].armed {
			return
		}
		b.nSys++
		nfd, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			b.resetFile(int32(nfd))
			b.emit(b.files[fd].ops[pAccept].ud, int32(nfd), cqeFMore)
		case unix.EAGAIN:
			f.readable = false
			return
		default:
			// Any error ends the multishot accept, as on io_uring; the
			// core decides whether to re-arm at once or pause.
			b.finish(fd, &f.ops[pAccept], -int32(e))
			return
		}
	}
	if b.edge {
		b.queue(fd) // more may be waiting; the edge will not repeat
	}
}

// doRecv reads what fd has into free provided buffers, one completion per
// buffer filled (as a multishot recv does), up to epRecvBudget buffers per
// turn. A read that filled what it offered makes the next ones span
// several buffers (one recvmsg, epRecvSpan buffers), for large transfers.
func (b *epollBackend) doRecv(fd int32) {
	f := &b.files[fd]
	p := &f.ops[pRecv]
	for n := 0; n < epRecvBudget; {
		if len(b.free) == 0 {
			b.finish(fd, p, -int32(unix.ENOBUFS))
			return
		}
		span := 1
		if f.filled {
			span = min(epRecvSpan, len(b.free), epRecvBudget-n)
		}
		var r uintptr
		var e syscall.Errno
		b.nSys++
		if span == 1 {
			buf := b.buffer(b.free[len(b.free)-1])
			r, _, e = unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
				unix.MSG_DONTWAIT, 0, 0)
		} else {
			for i := 0; i < span; i++ {
				buf := b.buffer(b.free[len(b.free)-1-i])
				b.riov[i].Base = &buf[0]
				b.riov[i].SetLen(len(buf))
			}
			b.rmsg.Iov = &b.riov[0]
			b.rmsg.SetIovlen(span)
			r, _, e = unix.RawSyscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.rmsg)), unix.MSG_DONTWAIT)
		}
		switch {
		case e == unix.EAGAIN:
			f.readable, f.filled = false, false
			return
		case e == unix.EINTR:
			continue
		case e != 0:
			b.finish(fd, p, -int32(e))
			return
		case r == 0:
			b.finish(fd, p, 0)
			return
		}
		offered := span * int(b.bufSize)
		f.filled = int(r) == offered
		for left := int(r); left > 0; left -= int(b.bufSize) {
			bid := b.free[len(b.free)-1]
			b.free = b.free[:len(b.free)-1]
			b.emit(p.ud, int32(min(left, int(b.bufSize))), cqeFBuffer|uint32(bid)<<cqeBufferShift|cqeFMore)
			n++
		}
		if int(r) < offered && !f.hup {
			// A short read drained the socket; new data brings a new edge.
			f.readable = false
			return
		}
	}
	if b.edge {
		b.queue(fd)
	}
}

func (b *epollBackend) doRead(fd int32) {
	f := &b.files[fd]
	p := &f.ops[pRead]
	for {
		b.nSys++
		r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(p.addr), uintptr(p.len))
		switch e {
		case 0:
			b.finish(fd, p, int32(r))
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			f.readable = false
		default:
			b.finish(fd, p, -int32(e))
		}
		return
	}
}

// doSend writes the pending send of fd. It reports whether the send is
// still pending, and otherwise its result.
func (b *epollBackend) doSend(fd int32) (bool, int32) {
	f := &b.files[fd]
	p := &f.ops[pSend]
	r, full, e := b.sendChunks(fd, p, sendLen(p))
	switch e {
	case 0:
		f = &b.files[fd]
		if b.edge && full {
			f.writable = false // write space brings an edge
		}
		b.finish(fd, p, int32(r))
		return false, int32(r)
	case unix.EAGAIN:
		f.writable = false
		f.outWatch = b.edge
		b.index(p.ud, fd)
		b.touch(fd)
		return true, 0
	default:
		b.finish(fd, p, -int32(e))
		return false, -int32(e)
	}
}

// epSendChunk bounds the bytes of one send syscall on a socket the kernel
// paces itself (paced), epSendChunks the chunks of one send. Under
// internal pacing, a send larger than one GSO packet (on loopback, 64 KiB
// less headers) leaves its first packet at once and the rest to a pacing
// hrtimer, which fires microseconds later in softirq context, at a cost
// the sender pays. The next send, a syscall later, finds the pacing time
// passed when the pacing rate is high (loopback); at a real link's rate
// the chunks are paced anyway and only add syscalls. On the 16 KiB echo
// under BBR, sending the queued replies (up to 256 KiB a turn) in chunks
// of 60 KiB gained 9-30% messages per server-CPU-second in four of five
// sets of paired runs on a noisy host (-3 to +6% in the fifth); under cubic
// the same chunks cost 6-13% in syscalls, hence only on paced sockets
// (docs/BENCHMARKS.md §7.3).
const (
	epSendChunk  = 60 << 10
	epSendChunks = 16
)

// paced reports whether fd is a TCP socket whose congestion control asks
// the kernel to pace it (BBR sets SK_PACING_NEEDED), learnt with one
// getsockopt at its first send that could be chunked. TCP then paces with
// a timer of its own unless the fq qdisc paces for it; the qdisc cannot
// be seen from here, so behind fq the chunks only add syscalls.
func (b *epollBackend) paced(fd int32) bool {
	f := &b.files[fd]
	if f.pacing == 0 {
		f.pacing = -1
		b.nSys++
		cc, err := unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
		if err == nil && strings.HasPrefix(cc, "bbr") {
			f.pacing = 1
		}
	}
	return f.pacing > 0
}

// testHookSendChunk, when set by a test, runs after each chunk a send
// that needs several has sent.
var testHookSendChunk func(fd int32)

// sendChunks sends want bytes of p's buffer or iovecs, in calls of at
// most epSendChunk bytes on a paced socket (at most epSendChunks of them,
// so one socket does not hold the worker and the count fits a
// completion) and in one call otherwise, until one is short, would block
// or fails. full reports that the socket took less than offered. It returns
// the bytes sent, or the error when none were, or when a chunk after the
// first met the socket's error (a reset): the kernel reports that once
// and clears it, so a partial count now would leave the retry to see
// EPIPE and the read that follows to see a clean EOF, and the connection
// would not learn that it was reset. The bytes that went before it do not
// matter to a connection that is gone. Errors that come back when asked
// again (out of memory) end the send short instead.
func (b *epollBackend) sendChunks(fd int32, p *epPend, want uint64) (sent uint64, full bool, _ syscall.Errno) {
	var m *msghdr
	var iov []iovec
	if p.code == opSendmsg {
		m = (*msghdr)(rawPtr(p.addr))
		iov = unsafe.Slice((*iovec)(rawPtr(m.iov)), m.iovlen)
	}
	// whole: one call sends the message as the caller built it. Chunked,
	// even a first chunk that is also the last (want capped to one chunk)
	// goes through siov, since the caller's iovecs cover more than want.
	chunk, whole := want, true
	// Ancillary data goes once, with the whole message: no chunks.
	if want > epSendChunk && (m == nil || m.controllen == 0) && b.paced(fd) {
		chunk, whole = epSendChunk, false
		want = min(want, uint64(b.sendChunkMax)*epSendChunk)
	}
	vi, voff := 0, uint64(0) // where the next chunk starts in iov
	for {
		n := min(want-sent, chunk)
		var r uintptr
		var e syscall.Errno
		b.nSys++
		switch {
		case m == nil:
			r, _, e = unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(p.addr+sent), uintptr(n),
				unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		case whole:
			r, _, e = unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(p.addr), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		default:
			b.siov = b.siov[:0]
			for left, i, off := n, vi, voff; left > 0; i, off = i+1, 0 {
				k := min(iov[i].len-off, left)
				b.siov = append(b.siov, iovec{base: iov[i].base + off, len: k})
				left -= k
			}
			b.smsg = *m
			b.smsg.iov = uint64(uintptr(unsafe.Pointer(&b.siov[0])))
			b.smsg.iovlen = uint64(len(b.siov))
			r, _, e = unix.RawSyscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&b.smsg)), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		}
		switch {
		case e == unix.EINTR:
			continue
		case e != 0 && sent == 0:
			return 0, false, e
		case e == unix.EAGAIN:
			return sent, true, 0
		case e == unix.ENOBUFS || e == unix.ENOMEM:
			return sent, false, 0
		case e != 0:
			return 0, false, e
		}
		sent += uint64(r)
		if uint64(r) < n || sent == want {
			return sent, uint64(r) < n, 0
		}
		for adv := uint64(r); m != nil && adv > 0; {
			k := min(iov[vi].len-voff, adv)
			adv -= k
			if voff += k; voff == iov[vi].len {
				vi, voff = vi+1, 0
			}
		}
		if testHookSendChunk != nil {
			testHookSendChunk(fd)
		}
	}
}

// sendLen is the byte count a send asked for.
func sendLen(p *epPend) uint64 {
	if p.code == opSend {
		return uint64(p.len)
	}
	m := (*msghdr)(rawPtr(p.addr))
	var n uint64
	for _, v := range unsafe.Slice((*iovec)(rawPtr(m.iov)), m.iovlen) {
		n += v.len
	}
	return n
}

func (b *epollBackend) startConnect(op *sqOp) (bool, int32) {
	fd := op.fd
	if fd < 0 {
		return b.done(op.ud, -int32(unix.EBADF))
	}
	f := b.file(fd)
	if f.ops[pConn].armed {
		return b.done(op.ud, -int32(unix.EALREADY))
	}
	// connect(2) has no MSG_DONTWAIT: the socket itself must not block.
	if res := b.ensureNonblock(fd); res < 0 {
		return b.done(op.ud, res)
	}
	b.nSys++
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(op.addr), uintptr(op.len))
	switch e {
	case 0:
		return b.done(op.ud, 0)
	case unix.EINPROGRESS, unix.EINTR:
		f.ops[pConn] = epPend{ud: op.ud, code: op.code, armed: true}
		f.writable = false
		f.outWatch = b.edge
		b.index(op.ud, fd)
		b.touch(fd)
		return true, 0
	}
	return b.done(op.ud, -int32(e))
}

// ensureNonblock sets O_NONBLOCK on fd (for the calls that have no
// MSG_DONTWAIT); it returns 0 or -errno.
func (b *epollBackend) ensureNonblock(fd int32) int32 {
	b.nSys++
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil && fl&unix.O_NONBLOCK == 0 {
		b.nSys++
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK)
	}
	if err != nil {
		return -errnoOf(err)
	}
	return 0
}

func (b *epollBackend) doConnect(fd int32) {
	f := &b.files[fd]
	b.nSys++
	v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		b.finish(fd, &f.ops[pConn], -errnoOf(err))
		return
	}
	b.finish(fd, &f.ops[pConn], -int32(v))
}

// Timers: a binary min-heap on deadline. Every move goes through
// setTimer, which keeps linked's positions right.

func (b *epollBackend) pushTimer(t epTimer) {
	b.timers = append(b.timers, epTimer{})
	b.setTimer(len(b.timers)-1, t)
	b.timerUp(len(b.timers) - 1)
}

// removeTimer takes timers[i] out of the heap. A linked timeout's entry in
// linked is the caller's to delete.
func (b *epollBackend) removeTimer(i int) {
	last := len(b.timers) - 1
	t := b.timers[last]
	b.timers = b.timers[:last]
	if i < last {
		b.setTimer(i, t)
		b.timerDown(i)
		b.timerUp(i)
	}
}

func (b *epollBackend) setTimer(i int, t epTimer) {
	b.timers[i] = t
	if t.target != 0 {
		b.linked[t.target] = i
	}
}

func (b *epollBackend) swapTimers(i, j int) {
	ti, tj := b.timers[i], b.timers[j]
	b.setTimer(i, tj)
	b.setTimer(j, ti)
}

func (b *epollBackend) timerUp(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if b.timers[p].at <= b.timers[i].at {
			return
		}
		b.swapTimers(p, i)
		i = p
	}
}

func (b *epollBackend) timerDown(i int) {
	for {
		l := 2*i + 1
		if l >= len(b.timers) {
			return
		}
		m := l
		if r := l + 1; r < len(b.timers) && b.timers[r].at < b.timers[l].at {
			m = r
		}
		if b.timers[i].at <= b.timers[m].at {
			return
		}
		b.swapTimers(i, m)
		i = m
	}
}

func (b *epollBackend) expireTimers() {
	if len(b.timers) == 0 {
		return
	}
	now := b.now()
	for len(b.timers) > 0 && b.timers[0].at <= now {
		t := b.timers[0]
		b.removeTimer(0)
		if t.target != 0 {
			// A linked timeout: it completes with ETIME and its op is
			// cancelled.
			delete(b.linked, t.target)
			b.complete(t.ud, -int32(unix.ETIME))
			b.cancelTarget(t.target)
			continue
		}
		b.complete(t.ud, -int32(unix.ETIME))
	}
}

func (b *epollBackend) buffer(bid uint16) []byte {
	off := int(bid) * int(b.bufSize)
	return b.bufMem.b[off : off+int(b.bufSize) : off+int(b.bufSize)]
}

func (b *epollBackend) recycle(bid uint16) { b.free = append(b.free, bid) }

func (b *epollBackend) buffersFree() int { return len(b.free) }

func (b *epollBackend) fixedFiles() bool { return false }

// attach starts a fresh entry for fd; sockets run on plain fds.
func (b *epollBackend) attach(idx uint32, fd int32, gen uint32) (int32, uint8) {
	b.resetFile(fd)
	return fd, 0
}

// detach stages the socket's close; one completion with ud follows.
func (b *epollBackend) detach(idx uint32, fd int32, fixed bool, ud uint64) int {
	b.stage(sqOp{code: opClose, fd: fd, ud: ud})
	return 1
}

// wake makes a blocked enter return with a udWake completion. The core
// coalesces wakes; the backend writes the eventfd every time it is asked.
func (b *epollBackend) wake() {
	one := [8]byte{1}
	_, _ = unix.Write(b.wakeFd, one[:])
}

func (b *epollBackend) cgoCalls() uint64 { return 0 }

func (b *epollBackend) enters() uint64 { return b.nWait }

func (b *epollBackend) holds() (uint64, uint64, uint64) {
	return b.nHeld, b.nHoldTimeouts, b.runnable.yields
}

// syscalls counts every system call the backend made, epoll_wait
// included, up to the end of its last enter; safe from any goroutine.
func (b *epollBackend) syscalls() uint64 { return b.sysPub.Load() }

// ctls counts the epoll_ctl calls among them; safe from any goroutine.
func (b *epollBackend) ctls() uint64 { return b.ctlPub.Load() }

func (b *epollBackend) describe() string {
	mode := "edge-triggered"
	if !b.edge {
		mode = "level-triggered"
	}
	return fmt.Sprintf("epoll (%s, provided buffers %dx%d, plain fds)", mode, b.bufCount, b.bufSize)
}

// close releases the epoll set, the wake eventfd and the buffers. Sockets
// whose close was staged but never entered are closed here, so none leaks.
func (b *epollBackend) close() error {
	for _, op := range b.staged {
		if op.code == opClose && op.fd >= 0 {
			_ = unix.Close(int(op.fd))
		}
	}
	b.staged = b.staged[:0]
	b.stopParking()
	if b.epfd >= 0 {
		_ = unix.Close(b.epfd)
		b.epfd = -1
	}
	if b.wakeFd >= 0 {
		_ = unix.Close(b.wakeFd)
		b.wakeFd = -1
	}
	b.bufMem.unmap()
	return nil
}
