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

// worker is one event loop: a locked goroutine that owns a backend (ring),
// a listener, a send pool and a connection slab. Connection tasks are
// coroutines resumed only here.
type worker struct {
	id      int
	cfg     *Config
	log     *slog.Logger
	be      backend
	det     detacher
	handler AsyncEventHandler
	lfd     int // listener, -1 when none

	conns     []*conn
	freeSlots []uint32
	live      int

	pool   *sendPool
	iovMem region

	cur *task
	// parsing is the stack of connections whose parse closure is running:
	// a task must not suspend inside one.
	parsing []*conn
	runq    []*task
	runq2   []*task
	flushq  []*conn
	parked  []uint32

	lastYield     time.Time
	acceptArmed   bool
	acceptRetryAt time.Time
	stopping      atomic.Bool
	stopped       bool // the loop has begun stopping (loop-local view of stopping)

	wakeMu   sync.Mutex
	beClosed bool

	st  counters
	pub publishedCounters
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
	return &worker{id: id, cfg: cfg, log: cfg.Logger, lfd: lfd}
}

// testHookWorkerSetup, when set by a test, runs before a worker sets up its
// backend and can make the setup fail.
var testHookWorkerSetup func(worker int, kind Backend) error

// setup runs on the worker's locked thread: the ring is created by the
// thread that will submit to it (SINGLE_ISSUER).
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
	w.conns = make([]*conn, 0, 64)
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
	w.armAccept()
	var drainDeadline time.Time
	for {
		// Tasks run to their next suspension; what they queue is flushed
		// below, so one enter carries every send of this iteration.
		for len(w.runq) > 0 {
			w.runq, w.runq2 = w.runq2[:0], w.runq
			for _, t := range w.runq2 {
				w.resume(t)
			}
			clear(w.runq2)
		}
		w.flushSends()
		w.rearmParked()
		w.publish()

		if w.stopping.Load() {
			if drainDeadline.IsZero() {
				drainDeadline = time.Now().Add(2 * time.Second)
				w.beginStop()
				continue
			}
			if (w.live == 0 && !w.acceptArmed) || time.Now().After(drainDeadline) {
				return
			}
		}

		timeout := time.Duration(-1)
		if !w.acceptRetryAt.IsZero() {
			timeout = max(time.Until(w.acceptRetryAt), 0)
		}
		if !drainDeadline.IsZero() {
			timeout = 50 * time.Millisecond
		}
		wait := len(w.runq) == 0
		if wait {
			w.yieldToScheduler()
		}
		cqes, err := w.be.enter(wait, timeout)
		w.st.loops++
		if err != nil {
			w.log.Error("ringline: backend enter failed; worker stopping", "worker", w.id, "err", err)
			w.stopping.Store(true)
			continue
		}
		for i := range cqes {
			w.complete(&cqes[i])
		}
		if !w.acceptRetryAt.IsZero() && !time.Now().Before(w.acceptRetryAt) {
			w.acceptRetryAt = time.Time{}
			w.armAccept()
		}
	}
}

// yieldToScheduler passes through the Go scheduler every couple of
// milliseconds. A locked worker that never does looks overdue to sysmon,
// which then retakes its P and wakes another thread each time the worker
// blocks in the kernel: measured at 8-18% extra server CPU per message and
// double the ping-pong p50 on io_uring. gnet avoids it the same way.
func (w *worker) yieldToScheduler() {
	now := time.Now()
	if now.Sub(w.lastYield) >= 2*time.Millisecond {
		w.lastYield = now
		runtime.Gosched()
	}
}

func (w *worker) flushSends() {
	for _, c := range w.flushq {
		c.flushPending = false
		if c.state == connOpen {
			c.startSend()
		}
	}
	clear(w.flushq)
	w.flushq = w.flushq[:0]
}

// rearmParked re-arms recvs that stopped on ENOBUFS, as far as free buffers
// allow; the rest stay parked, so an exhausted ring never spins the loop.
func (w *worker) rearmParked() {
	for len(w.parked) > 0 && w.be.buffersFree() > 0 {
		idx := w.parked[0]
		w.parked = w.parked[1:]
		if cn := w.conns[idx]; cn.parked {
			cn.parked = false
			cn.armRecv()
		}
	}
	if len(w.parked) == 0 {
		w.parked = w.parked[:0:0]
	}
}

func (w *worker) armAccept() {
	if w.lfd < 0 || w.acceptArmed || w.stopping.Load() {
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
	case udSend:
		w.onSendCQE(cn, e)
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
		w.be.recycle(uint16(e.flags >> cqeBufferShift))
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
		if e.res > 0 && cn.state == connOpen && !cn.closeWanted {
			cn.onRecv(bid, int(e.res))
		} else {
			w.be.recycle(bid)
		}
	}
	switch {
	case e.res > 0:
	case e.res == 0:
		cn.eof = true
		cn.task.wake(waitRecv)
	case e.res == -int32(syscall.ENOBUFS):
		w.st.enobufs++
		cn.park()
	case e.res == -int32(syscall.ECANCELED):
		// Cancelled by pauseRecv or close, or by a failed link.
	default:
		cn.eof = true
		cn.rerr = errnoErr("recv", e.res)
		cn.task.wake(waitRecv)
	}
	if !more && !cn.recvArmed {
		cn.armRecv()
	}
}

func (w *worker) onSendCQE(cn *conn, e *cqEntry) {
	cn.sending = false
	cn.pending--
	if e.res >= 0 {
		w.st.bytesOut += uint64(e.res)
		cn.sentBytes(int(e.res))
	} else {
		cn.serr = errnoErr("send", e.res)
		cn.dropQueue()
		cn.eof = true
		cn.closeWanted = true
	}
	if !cn.sendIdle() && cn.state == connOpen {
		cn.startSend()
	} else if cn.closeWanted && cn.sendIdle() {
		cn.startClose()
	}
	cn.task.wake(waitSend)
	if len(cn.sendWaiters) > 0 {
		cn.wakeSendWaiters()
	}
}

func (w *worker) onAccept(e *cqEntry) {
	if e.flags&cqeFMore == 0 {
		w.acceptArmed = false
	}
	if e.res < 0 {
		if e.res != -int32(syscall.ECANCELED) && !w.stopping.Load() {
			w.log.Warn("ringline: accept failed", "worker", w.id, "err", syscall.Errno(-e.res))
			// Back off so a persistent EMFILE does not spin the loop.
			w.acceptRetryAt = time.Now().Add(10 * time.Millisecond)
		}
		return
	}
	fd := int(e.res)
	if !w.acceptArmed && w.acceptRetryAt.IsZero() {
		w.armAccept()
	}
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
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	w.openConn(cn, fd, false)
	cn.task = w.newTask(cn, func() { w.handler.OnAccept(ConnCtx{w: w, idx: cn.idx, gen: cn.gen}) })
	cn.task.waiting = waitRecv
	cn.task.wake(waitRecv)
}

func (w *worker) allocConn() *conn {
	if n := len(w.freeSlots); n > 0 {
		idx := w.freeSlots[n-1]
		w.freeSlots = w.freeSlots[:n-1]
		return w.conns[idx]
	}
	if len(w.conns) >= w.cfg.MaxConnections {
		return nil
	}
	cn := &conn{w: w, idx: uint32(len(w.conns)), lent: -1}
	w.conns = append(w.conns, cn)
	return cn
}

func (w *worker) openConn(cn *conn, fd int, outbound bool) {
	gen, q := cn.gen, cn.q[:0]
	if cap(q) == 0 {
		// Allocated here, on the worker's stack, not on the task's first
		// Send: growing a slice on a fresh 2 KiB coroutine stack doubles
		// that stack for the connection's lifetime (+4 KiB per idle
		// connection, measured).
		q = make([]sendSeg, 0, 4)
	}
	*cn = conn{w: w, idx: cn.idx, gen: gen, state: connOpen, fd: int32(fd), lent: -1, outbound: outbound, q: q}
	w.live++
	cn.opFd, cn.opFlags = w.det.attach(cn.idx, int32(fd), cn.gen)
	if cn.opFlags&opFFixed != 0 {
		cn.pending++ // the FILES_UPDATE completion
	}
	// The recv is staged right behind attach, which may have linked to it,
	// even with no buffer free: the kernel then answers ENOBUFS and the
	// connection parks like any other.
	cn.stageRecv()
}

// beginStop starts shutdown: no new accepts, every connection closes, and
// tasks that do not return when told are stopped.
func (w *worker) beginStop() {
	w.stopped = true
	if w.lfd >= 0 {
		if w.acceptArmed {
			w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, 0, 0, acceptCancelPayload), addr: packUD(udAccept, 0, 0, 0)})
		}
		unix.Close(w.lfd)
		w.lfd = -1
	}
	for _, cn := range w.conns {
		if cn == nil || cn.state == connFree {
			continue
		}
		if !cn.sending {
			cn.dropQueue()
		} else {
			w.be.stage(sqOp{code: opCancel, ud: packUD(udCancel, cn.idx, cn.gen, 0), addr: packUD(udSend, cn.idx, cn.gen, 0)})
			cn.pending++
		}
		cn.eof = true
		cn.requestClose()
		if cn.state == connOpen && !cn.sending {
			cn.startClose()
		}
		if t := cn.task; t != nil && !t.done {
			// One last resume to see EOF and return; then stop it.
			t.waiting = waitRecv | waitSend
			w.resume(t)
			if !t.done {
				w.kill(t)
			}
		}
	}
}

// teardown releases everything the worker owns. Runs on the worker thread.
func (w *worker) teardown() {
	for _, cn := range w.conns {
		if cn == nil {
			continue
		}
		if t := cn.task; t != nil && !t.done {
			w.kill(t)
		}
		// Only sockets whose close was never staged: a staged close has
		// been submitted by the last enter, and closing its number again
		// could close an fd another worker just got.
		if cn.state == connOpen && cn.fd >= 0 {
			unix.Close(int(cn.fd))
			cn.fd = -1
		}
	}
	if w.lfd >= 0 {
		unix.Close(w.lfd)
		w.lfd = -1
	}
	if w.be != nil {
		// Submit what the last iteration staged (closes above all): a
		// drain that hit its deadline must not leak those sockets.
		_, _ = w.be.enter(false, 0)
		w.wakeMu.Lock()
		w.beClosed = true
		w.be.close()
		w.wakeMu.Unlock()
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

// wake interrupts a blocked enter. The lock keeps it from racing teardown,
// which would otherwise let a late wake write to a closed (reused) fd.
func (w *worker) wake() {
	w.wakeMu.Lock()
	if w.be != nil && !w.beClosed {
		w.be.wake()
	}
	w.wakeMu.Unlock()
}

func lockThread() { runtime.LockOSThread() }
