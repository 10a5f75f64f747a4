package ringline

import (
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// worker is one event loop: a goroutine (locked to its thread on io_uring
// or with PinCPUs) that owns a backend (ring),
// a listener, a send pool and a connection slab. Connection tasks are
// coroutines resumed only here.
type worker struct {
	id      int
	cfg     *Config
	log     *slog.Logger
	be      backend
	det     detacher
	handler AsyncEventHandler
	lfd     int  // listener, -1 when none
	lunix   bool // the listener is a Unix socket (no TCP options on what it accepts)
	// shutdown is the runtime's Shutdown, for TaskCtx.RequestShutdown.
	shutdown func()
	// exitReady is Launch's setup channel, for a factory that Goexits.
	exitReady chan<- error

	conns     []*conn
	freeSlots []uint32
	live      int

	pool      *sendPool
	iovMem    region
	sendState // zero copy, references, forwarded buffers, SendWait (sendparts.go)
	// tlsGather is where SendParts on a TLS connection gathers parts
	// into a record (tls.go).
	tlsGather []byte

	cur *task
	// tasks counts live tasks; allTasks holds them (intrusive list through
	// task.prevT/nextT), so shutdown can stop those without a connection.
	tasks    int
	allTasks *task
	// aborts are tasks Abort asked to stop; the loop stops them between
	// resumes.
	aborts []*task
	// g is the loop goroutine's identity and curG the task coroutine the
	// loop is running (0 between resumes): a ConnCtx method proceeds only
	// on one of the two (onWorker). curG is atomic because foreign
	// goroutines read it to be refused.
	g    uintptr
	curG atomic.Uintptr
	// parsing is the stack of connections whose parse closure is running:
	// a task must not suspend inside one.
	parsing []*conn
	runq    []*task
	runq2   []*task
	flushq  []*conn
	// parked holds connections whose recv stopped on ENOBUFS, FIFO from
	// parkHead, re-armed as buffers come back.
	parked   []uint32
	parkHead int

	epoch  time.Time
	timers timerHeap
	// timerPool holds idle Timer future nodes, which a Sleep borrows too;
	// timerNodes is how many exist, the room its slice keeps.
	timerPool  []*pooledTimer
	timerNodes int
	// spareTimers are connTimers ready for a connection that arms its
	// first deadline (conn.timers).
	spareTimers []*connTimers
	lastYield   time.Time
	locked      bool // the goroutine is locked to its thread (io_uring, PinCPUs)

	acceptArmed  bool
	acceptPaused bool      // an accept error pause is running (acceptT)
	acceptT      timerNode // the pause
	// spareFd is held in reserve so that at EMFILE the backlog can still
	// be accepted and refused at once instead of left hanging.
	spareFd   int
	acceptLog logLimiter
	// rearmStreak counts accept errors re-armed at once since the last
	// accepted connection: a "per-client" error that repeats with no
	// client getting through (an LSM denying accept says EPERM) pauses.
	rearmStreak int

	stopping atomic.Bool
	stopped  bool // the loop has begun stopping (loop-local view of stopping)
	exited   atomic.Bool

	// The wake path: wakePending coalesces wakes (one eventfd write until
	// the loop has seen it); posts are functions other goroutines hand
	// the loop. wakeMu keeps a wake from racing the backend's close.
	wakeMu      sync.Mutex
	beClosed    bool
	wakePending atomic.Bool
	wakeups     atomic.Uint64 // eventfd writes made by wake
	postMu      sync.Mutex
	posts       []func()
	posts2      []func()
	postClosed  bool

	// busyMark is the worker's progress mark, 0 while the loop waits in
	// the kernel: the watchdog reports a mark that stays the same for
	// longer than StallThreshold, in practice a task that does not yield.
	// The loop marks itself afresh at the start of each iteration and
	// again every markEvery steps within one (progress: task runs,
	// release callbacks, timers fired, connections told to stop), so an
	// iteration that does much short work keeps moving while one task
	// that blocks holds the mark still. Two stores per iteration and one
	// per markEvery steps, no clock read. Teardown marks
	// itself too while it runs user code (watchUserCode). Its low bits say
	// what the worker runs (busyPart), for the watchdog's warning.
	busyMark atomic.Uint64
	// The loop's own side of the mark: markSeq numbers the marks (they
	// never repeat, so the watchdog cannot take a new mark for one it saw
	// before), curMark is the one published now (0: idle), untilMark
	// counts the task runs and callbacks left before the next.
	markSeq   uint64
	curMark   uint64
	untilMark uint32
	// Watchdog state: the mark it last saw and since when (worker clock);
	// stuckSince is that time while the same busy mark has been seen
	// twice, for ShutdownContext.
	wdMark     uint64
	wdSince    int64
	wdReported bool
	stuckSince atomic.Int64
	// wd is the runtime's watchdog, woken when the loop turns busy (nil
	// without one).
	wd *stallWatch

	foreign foreignLog

	st       counters
	pub      publishedCounters
	pubLoops uint64 // st.loops at the last publish
}

// detacher is the backend hook that ties a socket to ring operations and
// releases it. Backends without fixed files return fd unchanged.
type detacher interface {
	attach(idx uint32, fd int32, gen uint32) (int32, uint8)
	detach(idx uint32, fd int32, fixed bool, ud uint64) int
}

func (w *worker) detach(cn *conn) int {
	return w.det.detach(cn.idx, cn.fd, cn.opFlags&opFFixed != 0, packUD(udClose, cn.idx, cn.gen, 0))
}

func newWorker(id int, cfg *Config, lfd int) *worker {
	// flushq and parsing grow from inside tasks (a send, a parse), and a
	// growing append there runs the allocator on the task's small stack:
	// they start with room.
	return &worker{id: id, cfg: cfg, log: cfg.Logger, lfd: lfd, spareFd: -1, epoch: time.Now(),
		flushq: make([]*conn, 0, 64), parsing: make([]*conn, 0, 4)}
}

// testHookWorkerSetup, when set by a test, runs before a worker sets up its
// backend and can make the setup fail.
var testHookWorkerSetup func(worker int, kind Backend) error

// testHookBackend, when set by a test, wraps each worker's new backend
// (tests count the operations the core stages and the completions it gets).
var testHookBackend func(worker int, be backend) backend

// setup runs on the worker's goroutine, on io_uring locked to the thread:
// the ring is created by the thread that will submit to it
// (SINGLE_ISSUER).
func (w *worker) setup(kind Backend) error {
	if testHookWorkerSetup != nil {
		if err := testHookWorkerSetup(w.id, kind); err != nil {
			return err
		}
	}
	be, err := newBackend(kind, w.cfg)
	if err != nil {
		return err
	}
	if testHookBackend != nil {
		be = testHookBackend(w.id, be)
	}
	w.be = be
	w.det = be.(detacher)
	if w.pool, err = newSendPool(w.cfg.SendPoolSlots, w.cfg.SendSlotSize); err != nil {
		be.close()
		return err
	}
	if w.iovMem, err = mapRegion(w.cfg.MaxConnections * iovAreaSize); err != nil {
		w.pool.close()
		be.close()
		return err
	}
	w.setupSend()
	w.conns = make([]*conn, 0, 64)
	// Best effort: without it EMFILE would leave the backlog waiting; a
	// missing spare is retried at the next accept pause.
	w.reserveSpare()
	return nil
}

func (w *worker) pin() {
	if !w.cfg.PinCPUs {
		return
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return
	}
	var cpus []int
	for i := 0; i < 1024; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) == 0 {
		return
	}
	var one unix.CPUSet
	one.Set(cpus[w.id%len(cpus)])
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		w.log.Warn("ringline: CPU pinning failed", "worker", w.id, "err", err)
	}
}

// run is the worker loop. It returns once shutdown was requested and every
// connection and operation has wound down.
func (w *worker) run() {
	defer w.markIdle() // a stopped worker is not a stalled one
	// The first iteration (the start task, the first accepts) is watched
	// too, and wakes a watchdog that found the worker not yet started
	// and went to sleep.
	w.markBusy(w.loopPart())
	w.startTask()
	w.armAccept()
	// At resetAt, shortly before drainDeadline, connections whose
	// zero-copy notifications are outstanding are reset, so the kernel
	// lets go of their memory before teardown (resetZeroCopyAtStop).
	var drainDeadline, resetAt time.Time
	for {
		w.serveSendWaits()
		// Tasks run to their next suspension; what they queue is flushed
		// below, so one enter carries every send of this iteration.
		for len(w.runq) > 0 || len(w.aborts) > 0 {
			w.runq, w.runq2 = w.runq2[:0], w.runq
			for _, t := range w.runq2 {
				w.resume(t)
			}
			clear(w.runq2)
			w.runAborts()
		}
		w.flushSends()
		w.rearmParked()

		if w.stopping.Load() {
			if drainDeadline.IsZero() {
				drainDeadline = time.Now().Add(w.cfg.ShutdownTimeout)
				resetAt = drainDeadline.Add(-min(w.cfg.ShutdownTimeout/4, 500*time.Millisecond))
				w.beginStop()
				continue
			}
			now := time.Now()
			if !resetAt.IsZero() && !now.Before(resetAt) {
				resetAt = time.Time{}
				w.resetZeroCopyAtStop()
			}
			if (w.live == 0 && w.tasks == 0 && !w.acceptArmed) || now.After(drainDeadline) {
				return
			}
		}

		timeout := w.nextTimeout()
		if !drainDeadline.IsZero() {
			tick := 50 * time.Millisecond
			if !resetAt.IsZero() {
				tick = min(tick, max(time.Until(resetAt), time.Millisecond))
			}
			if timeout < 0 || timeout > tick {
				timeout = tick
			}
		}
		wait := len(w.runq) == 0
		if wait {
			w.yieldToScheduler()
		}
		w.maybePublish(wait)
		w.markIdle()
		cqes, err := w.be.enter(wait, timeout)
		w.st.loops++
		w.markBusy(w.loopPart())
		if err != nil {
			w.log.Error("ringline: backend enter failed; worker stopping", "worker", w.id, "err", err)
			w.stopping.Store(true)
			continue
		}
		for i := range cqes {
			w.complete(&cqes[i])
		}
		w.fireTimers()
	}
}

// maybePublish copies the counters for other goroutines before the loop
// may block, and every 64 iterations while it is busy: publishing is
// about 20 atomic stores, too many to pay on every iteration under load;
// every 64 iterations bounds the lag.
func (w *worker) maybePublish(wait bool) {
	if wait || w.st.loops-w.pubLoops >= 64 {
		w.pubLoops = w.st.loops
		w.publish()
	}
}

// yieldToScheduler passes through the Go scheduler every couple of
// milliseconds (for an unlocked worker a cheap reschedule, for a locked
// one a hand-off of its P to another thread and back). A worker that
// never does looks overdue to sysmon, which then retakes its P and wakes
// another thread each time the worker blocks in the kernel: measured at
// 8-18% extra server CPU per message and double the ping-pong p50 on
// io_uring. gnet avoids it the same way.
func (w *worker) yieldToScheduler() {
	now := time.Now()
	if now.Sub(w.lastYield) >= 2*time.Millisecond {
		w.lastYield = now
		runtime.Gosched()
	}
}

func (w *worker) flushSends() {
	// Releases and waiters first: a release callback may send, and slots
	// freed by tasks that ended must reach SendWait callers before the
	// loop blocks.
	w.serveSendWaits()
	for _, c := range w.flushq {
		c.flushPending = false
		if c.state == connOpen {
			c.startSend()
		}
	}
	clear(w.flushq)
	w.flushq = w.flushq[:0]
}

// rearmParked re-arms recvs that stopped on ENOBUFS, oldest first, as many
// as the free buffers can serve. A parked connection has data waiting
// (that is how it met ENOBUFS), and a re-armed multishot recv takes as
// many buffers as that data fills, so each is charged what its socket
// holds (SIOCINQ, at least one buffer); the oldest is re-armed whatever
// it needs once every buffer that can come back has (all of the ring but
// those forwards hold: a forward to a peer that does not read holds its
// buffer for as long, and waiting for it stalled every parked connection
// behind one whose socket held more than the rest of the ring), so the
// queue always moves. Re-arming more would only meet
// ENOBUFS again (with every buffer back between iterations, the loop
// used to re-arm every parked connection each time: six ENOBUFS per
// buffer filled). The rest stay parked until buffers come back, so an
// exhausted ring never spins the loop.
func (w *worker) rearmParked() {
	budget := w.be.buffersFree()
	attainable := w.cfg.BufferCount - w.bufsHeld
	bufSize := w.cfg.BufferSize
	for w.parkHead < len(w.parked) && budget > 0 {
		cn := w.conns[w.parked[w.parkHead]]
		if !cn.parked {
			w.parkHead++
			continue
		}
		need := 1
		if cn.fd >= 0 {
			if n, err := unix.IoctlGetInt(int(cn.fd), unix.SIOCINQ); err == nil && n > bufSize {
				need = (n + bufSize - 1) / bufSize
			}
		}
		if need > budget && budget < attainable {
			break // wait for more buffers rather than starve the rest
		}
		w.parkHead++
		cn.parked = false
		cn.armRecv()
		budget -= need
	}
	if w.parkHead == len(w.parked) {
		w.parked, w.parkHead = w.parked[:0], 0
	} else if w.parkHead > 64 && 2*w.parkHead > len(w.parked) {
		n := copy(w.parked, w.parked[w.parkHead:])
		w.parked, w.parkHead = w.parked[:n], 0
	}
}

func (w *worker) armAccept() {
	if w.lfd < 0 || w.acceptArmed || w.acceptPaused || w.stopping.Load() {
		return
	}
	w.acceptArmed = true
	w.be.stage(sqOp{code: opAcceptMulti, fd: int32(w.lfd), ud: packUD(udAccept, 0, 0, 0)})
}

// acceptCancelPayload marks the listener's cancel, whose user_data would
// otherwise read as a cancel for connection 0, generation 0.
const acceptCancelPayload = 1

// complete dispatches one completion to the core.
func (w *worker) complete(e *cqEntry) {
	kind := udKind(e.ud)
	switch kind {
	case udWake:
		w.onWake()
		return
	case udAccept:
		w.onAccept(e)
		return
	case udCancel:
		if udPayload(e.ud) == acceptCancelPayload {
			return // the listener's cancel: not connection 0's
		}
	}
	idx := udIdx(e.ud)
	if int(idx) >= len(w.conns) || w.conns[idx] == nil {
		w.stray(e)
		return
	}
	cn := w.conns[idx]
	if uint16(cn.gen) != udGen(e.ud) || cn.state == connFree {
		w.stray(e)
		return
	}
	switch kind {
	case udRecv:
		w.onRecvCQE(cn, e)
	case udSend, udSendZC:
		w.onSendCQE(cn, e)
	case udConnect, udLinkTimeout:
		w.onConnectCQE(cn, kind, e.res)
	case udShutdown:
		// A failed half-close (ENOTCONN after a reset) changes nothing:
		// the receive side reports the reset.
		cn.pending--
	case udCancel, udFilesUpdate:
		cn.pending--
		if kind == udFilesUpdate && e.res < 0 {
			// Registration failed: the linked recv is cancelled and will
			// be re-armed on the plain fd.
			cn.opFd, cn.opFlags = cn.fd, 0
		}
	case udClose:
		cn.pending--
		if cn.closesLeft--; cn.closesLeft == 0 && cn.state == connClosing {
			cn.state = connClosed
			cn.fd = -1
		}
	}
	cn.maybeFree()
}

// stray handles a completion for a slot that moved on; only a provided
// buffer needs care (it must go back to the ring).
func (w *worker) stray(e *cqEntry) {
	if e.flags&cqeFBuffer != 0 {
		w.recycle(uint16(e.flags >> cqeBufferShift))
	}
}

func (w *worker) onRecvCQE(cn *conn, e *cqEntry) {
	more := e.flags&cqeFMore != 0
	if !more {
		cn.recvArmed = false
		cn.pending--
	}
	if e.flags&cqeFBuffer != 0 {
		bid := uint16(e.flags >> cqeBufferShift)
		if e.res > 0 && cn.state == connOpen && (!cn.closeWanted || cn.tlsAwaitsPeer()) {
			cn.onRecv(bid, int(e.res))
		} else {
			w.recycle(bid)
		}
	}
	switch {
	case e.res > 0:
	case e.res == 0:
		cn.eof = true
		cn.tlsEOF()
		cn.task.wake(waitRecv)
	case e.res == -int32(syscall.ENOBUFS):
		w.st.enobufs++
		cn.park()
	case e.res == -int32(syscall.ECANCELED):
		// Cancelled by pauseRecv or close, or by a failed link.
	default:
		cn.eof = true
		cn.fail(errnoErr("recv", e.res))
		cn.tlsEOF()
		cn.task.wake(waitRecv)
	}
	if !more && !cn.recvArmed {
		cn.armRecv()
	}
}

// onSendCQE handles a send's completion. A zero-copy send completes
// twice exactly when its first completion carries cqeFMore: the result,
// then a notification (cqeFNotif) once the kernel no longer reads its
// memory, which is only then released; a connection's slot is not reused
// before its notifications have come (each counts in pending).
func (w *worker) onSendCQE(cn *conn, e *cqEntry) {
	res := e.res
	if udKind(e.ud) == udSendZC {
		seq := cn.zcSeqOf(udPayload(e.ud))
		if e.flags&cqeFNotif != 0 {
			cn.pending--
			w.onZCNotif(uint32(res))
			cn.zcDone(seq)
			if cn.closeWanted && cn.state == connOpen && cn.closeReady() {
				cn.startClose() // the close waited for this notification
			}
			return
		}
		if e.flags&cqeFMore != 0 {
			cn.pending++ // its notification
		} else {
			cn.zcDone(seq)
		}
		if res < 0 && zcRefused(res) {
			// Nothing went out: the same bytes go again, copied.
			w.zcFallback("the kernel refused a zero-copy send", syscall.Errno(-res))
			res = 0
		}
	}
	cn.sending = false
	cn.pending--
	if res >= 0 {
		w.st.bytesOut += uint64(res)
		cn.sentBytes(int(res))
	} else {
		cn.fail(errnoErr("send", res))
		cn.eof = true
		cn.closeWanted = true
	}
	if cn.err != nil {
		// Failed (this send, a reset seen by the recv, a receive limit, a
		// drain timeout): what is still queued will never go out, and the
		// peer must not take the cut stream for a clean end: the close is
		// a reset.
		if cn.qHead < len(cn.q) {
			cn.resetOnClose()
		}
		cn.dropQueue()
	}
	if !cn.sendIdle() && cn.state == connOpen {
		cn.startSend()
	} else if cn.closeWanted && cn.closeReady() {
		cn.startClose()
	} else if cn.shutWr {
		cn.maybeShutdownWrite()
	}
	cn.task.wake(waitSend)
	if cn.sx != nil && len(cn.sx.sendWaiters) > 0 {
		cn.wakeSendWaiters()
	}
}

func (w *worker) onAccept(e *cqEntry) {
	if e.flags&cqeFMore == 0 {
		w.acceptArmed = false
	}
	if e.res < 0 {
		w.acceptError(syscall.Errno(-e.res))
		return
	}
	fd := int(e.res)
	w.rearmStreak = 0
	w.armAccept()
	if w.stopping.Load() {
		unix.Close(fd)
		return
	}
	cn := w.allocConn()
	if cn == nil {
		w.st.rejected++
		unix.Close(fd)
		return
	}
	w.st.accepted++
	if !w.lunix {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	w.openConn(cn, fd, false)
	if w.cfg.TLS != nil {
		w.newTLSServer(cn) // its handshake runs first in the task (tls.go)
	}
	t := w.newTask(cn, nil) // the handshake, then OnAccept
	w.addTask(t)
	t.start()
}

// addTask registers a live task (taskDone unregisters it).
func (w *worker) addTask(t *task) {
	w.tasks++
	t.nextT = w.allTasks
	if w.allTasks != nil {
		w.allTasks.prevT = t
	}
	w.allTasks = t
}

// dropTask unregisters an ended task.
func (w *worker) dropTask(t *task) {
	if t.prevT != nil {
		t.prevT.nextT = t.nextT
	} else if w.allTasks == t {
		w.allTasks = t.nextT
	}
	if t.nextT != nil {
		t.nextT.prevT = t.prevT
	}
	t.prevT, t.nextT = nil, nil
	w.tasks--
}

// runAborts stops the tasks Abort asked to stop (between resumes: a task
// is never stopped from inside another).
func (w *worker) runAborts() {
	for i := 0; i < len(w.aborts); i++ {
		if t := w.aborts[i]; !t.done {
			w.kill(t)
		}
		w.aborts[i] = nil
	}
	w.aborts = w.aborts[:0]
}

// startTask runs the handler's OnStart, when it has one, as the worker's
// start task.
func (w *worker) startTask() {
	if s, ok := w.handler.(Starter); ok && !w.stopping.Load() {
		w.spawn(s.OnStart)
	}
}

// acceptRest is how long accepting rests after an error that the next
// accept would meet again (no fds, no memory).
const acceptRest = 10 * time.Millisecond

// acceptError is the one rule for a failed accept, whichever backend
// reported it (both end their multishot accept on any error): count it,
// log it at most once a second with how many were not logged, then act as
// acceptAction says.
func (w *worker) acceptError(errno syscall.Errno) {
	if errno == syscall.ECANCELED || w.stopping.Load() {
		return // our own cancel, at shutdown
	}
	w.st.acceptErrors++
	if ok, skipped := w.acceptLog.allow(w.now()); ok {
		w.log.Warn("ringline: accept failed", "worker", w.id, "err", errno,
			"errno", unix.ErrnoName(errno), "not_logged_since_last", skipped)
	}
	switch acceptAction(errno) {
	case acceptRearm:
		if w.rearmStreak++; w.rearmStreak < 64 {
			w.armAccept()
			return
		}
	case acceptRefuse:
		w.refuseBacklog()
	}
	w.acceptPaused = true
	w.acceptT.kind = tmAcceptRetry
	w.timers.set(&w.acceptT, addClock(w.now(), acceptRest))
}

// What the loop does after a failed accept.
const (
	acceptRearm  = iota // one client's trouble: accept again at once
	acceptPause         // accept again after acceptRest
	acceptRefuse        // no descriptors: refuse the backlog, then pause
)

// acceptAction classifies an accept error. A client that aborted in the
// backlog, a signal, or a firewall verdict concerns one connection: the
// next accept is unaffected, so pausing would only delay the others. Out of
// descriptors, the next accept would fail the same way: refuse who is
// waiting and rest. Anything else (no memory, a broken listener) rests.
func acceptAction(errno syscall.Errno) int {
	switch errno {
	case syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO, syscall.EPERM:
		return acceptRearm
	case syscall.EMFILE, syscall.ENFILE:
		return acceptRefuse
	}
	return acceptPause
}

// refuseBacklog runs at EMFILE/ENFILE: it frees the spare descriptor, then
// accepts and resets (SO_LINGER 0) every client waiting in the backlog, so
// each gets a prompt ECONNRESET instead of hanging until its own timeout,
// and takes the spare back.
func (w *worker) refuseBacklog() {
	w.reserveSpare()
	if w.spareFd < 0 || w.lfd < 0 {
		return
	}
	unix.Close(w.spareFd)
	w.spareFd = -1
	for range 4096 {
		nfd, _, err := unix.Accept4(w.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			break
		}
		_ = unix.SetsockoptLinger(nfd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(nfd)
		w.st.acceptRefused++
	}
	w.reserveSpare()
}

// reserveSpare (re)opens the spare descriptor when it is missing: at
// setup, or after refuseBacklog released it and another thread took the
// number before it could be opened again.
func (w *worker) reserveSpare() {
	if w.spareFd >= 0 || w.lfd < 0 {
		return
	}
	if fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		w.spareFd = fd
	}
}

func (w *worker) allocConn() *conn {
	if idx, ok := pop(&w.freeSlots); ok {
		return w.conns[idx]
	}
	if len(w.conns) >= w.cfg.MaxConnections {
		return nil
	}
	cn := &conn{w: w, idx: uint32(len(w.conns)), lent: -1}
	w.conns = append(w.conns, cn)
	return cn
}

// openConn makes a new socket fd the connection in slot cn and starts it.
func (w *worker) openConn(cn *conn, fd int, outbound bool) {
	w.initConn(cn, fd, outbound)
	w.startConn(cn)
}

// initConn takes slot cn for socket fd (state connOpen).
func (w *worker) initConn(cn *conn, fd int, outbound bool) {
	gen, q, lq, tm, sx := cn.gen, cn.q[:0], cn.lentq[:0], cn.tm, cn.sx
	if cap(q) == 0 {
		// Allocated here, on the worker's stack, not on the task's first
		// Send: growing a slice on a fresh 2 KiB coroutine stack doubles
		// that stack for the connection's lifetime (+4 KiB per idle
		// connection, measured).
		q = make([]sendSeg, 0, 4)
	}
	*cn = conn{w: w, idx: cn.idx, gen: gen, state: connOpen, fd: int32(fd), lent: -1, outbound: outbound, q: q, lentq: lq, tm: tm, sx: sx}
	if sx != nil {
		*sx = sendExtra{held: sx.held[:0], fwdHeld: sx.fwdHeld[:0], builder: sx.builder, sendWaiters: sx.sendWaiters[:0]}
	}
	w.live++
}

// startConn registers a connected socket (in the fixed-file table where it
// has room) and arms its receive.
func (w *worker) startConn(cn *conn) {
	cn.opFd, cn.opFlags = w.det.attach(cn.idx, cn.fd, cn.gen)
	if cn.opFlags&opFFixed != 0 {
		cn.pending++ // the FILES_UPDATE completion
	}
	// The recv is staged right behind attach, which may have linked to it,
	// even with no buffer free: the kernel then answers ENOBUFS and the
	// connection parks like any other.
	cn.stageRecv()
}

// testHookNoStopReset, when set by a test, skips resetZeroCopyAtStop: the
// notifications then do not come before teardown (a kernel slow to let
// go), to exercise what teardown does with references still outstanding.
var testHookNoStopReset bool

// resetZeroCopyAtStop resets, shortly before the shutdown deadline, every
// open connection with zero-copy notifications outstanding: they come
// once the peer has acknowledged the bytes, which a peer that does not
// read never does, and what the kernel still holds at teardown it keeps
// sending from an orphaned socket. The reset makes the kernel drop it and
// notify, so the memory (pool slots, references, forwarded buffers) is
// released safely before the worker ends.
func (w *worker) resetZeroCopyAtStop() {
	if testHookNoStopReset {
		return
	}
	for _, cn := range w.conns {
		if cn != nil && cn.state == connOpen && cn.sx != nil && cn.sx.zcSeq != cn.sx.zcBase {
			cn.reset(ErrShutdown)
		}
	}
}

// testHookStopConn, when set by a test, runs before beginStop tells each
// open connection to stop.
var testHookStopConn func()

// beginStop starts shutdown: no new accepts, every connection closes, and
// tasks that do not return when told are stopped.
func (w *worker) beginStop() {
	w.stopped = true
	// From here the tasks wind down, the first of them in this very
	// iteration: a stall is the stop's now (busyPart).
	w.markBusy(partStopping)
	if w.lfd >= 0 {
		if w.acceptArmed {
			w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, 0, 0, acceptCancelPayload), addr: packUD(udAccept, 0, 0, 0)})
		}
		unix.Close(w.lfd)
		w.lfd = -1
	}
	// Connections stop receiving (WithData returns 0, Err says
	// ErrShutdown) but keep sending, so a task can still say goodbye; each
	// closes when its task returns, or at the deadline.
	for _, cn := range w.conns {
		if cn == nil || cn.state != connOpen {
			continue
		}
		w.progress() // a stop with very many connections is long, not stalled
		if testHookStopConn != nil {
			testHookStopConn()
		}
		cn.eof = true
		if cn.recvArmed {
			w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, cn.idx, cn.gen, 0), addr: packUD(udRecv, cn.idx, cn.gen, 0)})
			cn.pending++
		}
		if cn.task == nil {
			cn.requestClose()
		}
		if cn.tls != nil {
			// A TLS close awaiting the peer's close_notify stops waiting:
			// with receives stopped the answer could never be read.
			cn.tls.releaseClose()
		}
	}
	// Every task is woken, whatever it waits for: its waits now return
	// (WithData 0, Sleep and Select ErrShutdown, Await the connection's
	// ErrShutdown, Mailbox.Recv ErrClosed) so it can wind down and return.
	// Those still running at Config.ShutdownTimeout are stopped then
	// (teardown), and one that waits again after being told is stopped
	// at once (task.told).
	for t := w.allTasks; t != nil; t = t.nextT {
		w.progress()
		t.wake(^uint8(0))
	}
	w.closePosts()
}

// markEvery is how many steps (task runs, release callbacks, timers
// fired, connections told to stop) one progress mark covers. A mark is an
// atomic store (plus a load to see whether the watchdog sleeps): one per
// 16 runs is a small share of what each run already costs (its switches
// in and out, two atomic stores of curG), and far less than a timer or a
// stopping connection costs. A false stall would take 16 steps in a row
// averaging StallThreshold/16 (15 ms at the default), each a latency
// problem of its own.
const markEvery = 16

// busyPart says what a busy worker runs, for the watchdog's warning (and
// ShutdownContext's error): while it serves, a stall holds up every
// connection; once its stop has begun the connections are closing, and a
// stall holds up the stop. It rides in the low partBits bits of the
// progress mark, so one load gives the watchdog both, and a part costs
// no store of its own.
type busyPart uint64

const (
	partServing     busyPart = iota // the loop, serving
	partStopping                    // the loop once the stop has begun: tasks told to wind down
	partEndingTasks                 // teardown: the tasks still alive are ended, their deferred calls run
	partReleasing                   // teardown: the release callbacks of references still queued run

	partBits = 2
	partMask = 1<<partBits - 1
)

// loopPart is what the loop's iterations run: serving, or winding down
// once the stop has begun.
func (w *worker) loopPart() busyPart {
	if w.stopped {
		return partStopping
	}
	return partServing
}

// markBusy gives the worker a fresh progress mark (never 0) for part p
// and wakes a sleeping watchdog: the store comes before the watchdog's
// flag is read (stallWatch).
func (w *worker) markBusy(p busyPart) {
	w.markSeq++
	w.curMark = w.markSeq<<partBits | uint64(p)
	w.untilMark = markEvery
	w.busyMark.Store(w.curMark)
	if w.wd != nil {
		w.wd.rouse()
	}
}

// markIdle clears the mark while the worker waits in the kernel or once
// it has stopped: nothing it runs then can stall it.
func (w *worker) markIdle() {
	w.curMark = 0
	w.busyMark.Store(0)
}

// progress counts a step about to start (a task run, a release callback,
// a timer fired, a connection told to stop) and marks the worker afresh
// every markEvery of them, so the watchdog times a task from at most
// markEvery steps before it, not from the start of an iteration that may
// take a great many healthy ones (every task is resumed once when a stop
// begins, and ended at teardown; a burst of deadlines fires at once). On
// the hot path it is a decrement and a test.
func (w *worker) progress() {
	if w.untilMark--; w.untilMark == 0 {
		w.remark()
	}
}

// remark is progress's slow path, out of line so that progress inlines.
//
//go:noinline
func (w *worker) remark() {
	if w.curMark == 0 {
		// Not marked busy: nothing to move on (every run is watched today,
		// but a mark made here would stay set and read as a stall).
		w.untilMark = markEvery
		return
	}
	w.markBusy(busyPart(w.curMark & partMask))
}

// watchUserCode runs f, a part p of teardown that runs user code (a
// stopped task's deferred calls, SendParts release callbacks), with the
// worker marked busy, so the watchdog reports a call that blocks there as
// it would in the loop, and says which part it is; the runs and callbacks
// in f mark progress as they do in the loop (progress). The rest of
// teardown (closes, the ring's teardown) is the runtime's own and is not
// timed.
func (w *worker) watchUserCode(p busyPart, f func()) {
	w.markBusy(p)
	defer w.markIdle()
	f()
}

// teardown releases everything the worker owns. Runs on the worker thread.
func (w *worker) teardown() {
	w.watchUserCode(partEndingTasks, func() {
		for t := w.allTasks; t != nil; t = w.allTasks {
			w.kill(t)
		}
	})
	for _, cn := range w.conns {
		if cn == nil {
			continue
		}
		// Only sockets whose close was never staged: a staged close has
		// been submitted by the last enter, and closing its number again
		// could close an fd another worker just got.
		if (cn.state == connOpen || cn.state == connConnecting) && cn.fd >= 0 {
			unix.Close(int(cn.fd))
			cn.fd = -1
		}
	}
	if w.lfd >= 0 {
		unix.Close(w.lfd)
		w.lfd = -1
	}
	if w.spareFd >= 0 {
		unix.Close(w.spareFd)
		w.spareFd = -1
	}
	w.closePosts()
	if w.be != nil {
		// Submit what the last iteration staged (closes above all): a
		// drain that hit its deadline must not leak those sockets.
		_, _ = w.be.enter(false, 0)
		w.wakeMu.Lock()
		w.beClosed = true
		w.be.close()
		w.wakeMu.Unlock()
	}
	// After the ring: no operation reads memory any more, but a zero-copy
	// send's socket may (its references stay pinned).
	w.watchUserCode(partReleasing, w.releaseSendsAtStop)
	w.stopReleases()
	if w.be != nil {
		w.publish() // after close, so its C calls are counted too
	}
	if w.pool != nil {
		w.pool.close()
	}
	w.iovMem.unmap()
}

// stop asks the worker to wind down; safe from any goroutine.
func (w *worker) stop() {
	if w.stopping.CompareAndSwap(false, true) {
		w.wake()
	}
}

// wake makes the loop come round; safe from any goroutine. Wakes coalesce:
// while one is on its way (wakePending), later calls cost an atomic swap,
// so a burst of posts costs one eventfd write. The loop clears
// wakePending only after the backend consumed the eventfd and before it
// looks at what the wakers left (posts, stopping), so no wake is lost. The
// lock keeps a wake from racing teardown, which would otherwise let a late
// wake write to a closed (reused) fd.
func (w *worker) wake() {
	if w.wakePending.Swap(true) {
		return
	}
	w.wakeMu.Lock()
	if w.be != nil && !w.beClosed {
		w.be.wake()
		w.wakeups.Add(1)
	}
	w.wakeMu.Unlock()
}

// onWake handles the wake completion: wakes are re-enabled first, then
// the posts are run.
func (w *worker) onWake() {
	w.wakePending.Store(false)
	w.runPosts()
}

// post hands fn to the loop, which runs it on the worker goroutine (not in
// a task: fn must not suspend). Safe from any goroutine; it fails with
// ErrClosed once the worker has stopped taking posts.
func (w *worker) post(fn func()) error {
	w.postMu.Lock()
	if w.postClosed || w.stopping.Load() {
		w.postMu.Unlock()
		return ErrClosed
	}
	w.posts = append(w.posts, fn)
	w.postMu.Unlock()
	w.wake()
	return nil
}

func (w *worker) runPosts() {
	w.postMu.Lock()
	w.posts, w.posts2 = w.posts2[:0], w.posts
	w.postMu.Unlock()
	for i, fn := range w.posts2 {
		w.posts2[i] = nil
		fn()
	}
}

// closePosts stops taking posts and runs those already taken.
func (w *worker) closePosts() {
	w.postMu.Lock()
	w.postClosed = true
	w.postMu.Unlock()
	w.runPosts()
}

func lockThread() { runtime.LockOSThread() }

// pop takes the last element of the free list *s (its slot zeroed, so a
// pooled pointer does not stay reachable from the spare capacity), and
// reports whether there was one.
func pop[T any](s *[]T) (v T, ok bool) {
	k := len(*s)
	if k == 0 {
		return v, false
	}
	v = (*s)[k-1]
	var zero T
	(*s)[k-1] = zero
	*s = (*s)[:k-1]
	return v, true
}
